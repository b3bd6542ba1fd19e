"""The reranker interface and the bookkeeping every reranker shares (inputs in, ranked Hits out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from tansaku.index.checks import check_optional_int
from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit

STAGE = "rerank"


@runtime_checkable
class Reranker(Protocol):
    """Re-scores a query's candidate documents; higher scores are more relevant.

    The contract every caller types against (the pipeline, the server, the integrations):
    a reranker scores pairs, and ranks Hits by what BM25 indexed, ``Hit.indexed_text``
    ("title text"). Plain strings are ranked by :func:`rank_texts`, which gives their
    positions. Models with a tokenizer and windows offer more: :class:`ModelReranker`.
    """

    def rerank(self, query: str, docs: Sequence[Hit | str], top_n: int | None = None) -> list[Hit]:
        """New Hits sorted by score (best first), ranked 1..n with ``stage="rerank"``.

        A Hit is scored on its ``indexed_text`` and keeps its ``doc_id``/``title``/``text``/
        ``metadata``; a plain string becomes a Hit whose ``doc_id`` is its position. ``top_n``
        keeps only the best ``top_n``; equal scores keep the input order.
        """
        ...

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One float score per ``(query, document)`` pair, in input order."""
        ...


@runtime_checkable
class ModelReranker(Reranker, Protocol):
    """A reranker backed by one cross-encoder model (what the HTTP server can use fully).

    Beyond :class:`Reranker`: the model's name, its tokenizer (for token counts and
    ``max_tokens_per_doc``), its input length and long-document windows, raw logits, and a
    copy with fewer windows per document. :class:`~tansaku.rerank.CrossEncoderReranker`
    is one; a remote reranker serving one model can be another.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def max_length(self) -> int: ...

    @property
    def max_chunks_per_doc(self) -> int: ...

    @property
    def tokenizer(self) -> Any: ...

    def compute_score(self, pairs: Any, normalize: bool = False) -> Any:
        """Raw logits of the pairs, or their sigmoid with ``normalize`` (FlagEmbedding style)."""
        ...

    def with_options(
        self,
        *,
        max_chunks_per_doc: int | None = None,
        truncation_side: Literal["right", "left"] | None = None,
    ) -> ModelReranker:
        """A copy with the same weights scoring at most ``max_chunks_per_doc`` windows per
        document, laid out from its start (``truncation_side="right"``) or its end (``"left"``)."""
        ...


def reranker_name(reranker: Reranker) -> str:
    """The model a reranker serves (its ``model_name``), else its class name."""
    name = getattr(reranker, "model_name", None)  # optional outside ModelReranker
    return str(name) if isinstance(name, str) and name else type(reranker).__name__


@dataclass(frozen=True)
class RankedText:
    """One input of :func:`rank_texts`: its position in the request and its score."""

    index: int
    score: float


def rank_texts(
    reranker: Reranker, query: str, texts: Sequence[str], top_n: int | None = None
) -> list[RankedText]:
    """Rank plain strings: positions and scores, best first (ties keep the input order)."""
    check_top_n(top_n)
    scores = np.asarray(reranker.score([(query, text) for text in texts]), dtype=np.float64)
    return [RankedText(i, float(scores[i])) for i in ranking(scores, top_n)]


def ranking(scores: np.ndarray | Sequence[float], top_n: int | None = None) -> list[int]:
    """Positions by descending score; a stable sort, so equal scores keep their input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return (order if top_n is None else order[:top_n]).tolist()


def check_top_n(top_n: int | None) -> None:
    """Reject a ``top_n`` that would silently return nothing."""
    check_optional_int("top_n", top_n)


def document_texts(docs: Sequence[Hit | str]) -> list[str]:
    """The text to score for each input (a Hit's ``indexed_text``); a Hit without text is an
    error, not an empty doc."""
    texts: list[str] = []
    for position, doc in enumerate(docs):
        if isinstance(doc, Hit):
            text = doc.indexed_text
            if text is None:
                raise ConfigError(
                    f"hit {doc.doc_id!r} (position {position}) has no text to rerank; "
                    "join the hits with the corpus (fill Hit.text) before the rerank stage"
                )
            texts.append(text)
        elif isinstance(doc, str):
            texts.append(doc)
        else:
            raise ConfigError(
                f"documents to rerank must be Hit or str, got {type(doc).__name__} at position {position}"
            )
    return texts


def rerank_by_score(
    reranker: Reranker, query: str, docs: Sequence[Hit | str], top_n: int | None
) -> list[Hit]:
    """:meth:`Reranker.rerank` through ``reranker.score``: the arguments checked, each doc's
    text scored against ``query``, the docs ranked (what a reranker scoring pairs needs)."""
    if not isinstance(query, str):
        raise ConfigError(f"query must be a string, got {type(query).__name__}")
    check_top_n(top_n)
    texts = document_texts(docs)
    return ranked_hits(docs, reranker.score([(query, text) for text in texts]), top_n)


def is_single_pair(pairs: Any) -> bool:
    """Whether ``pairs`` is one ``(query, document)`` pair rather than a sequence of them."""
    return (
        isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(part, str) for part in pairs)
    )


def ranked_hits(docs: Sequence[Hit | str], scores: np.ndarray, top_n: int | None = None) -> list[Hit]:
    """Sort ``docs`` by ``scores`` (descending, stable) into ranked rerank-stage Hits."""
    if len(scores) != len(docs):
        raise ValueError(f"{len(scores)} scores for {len(docs)} documents")
    hits: list[Hit] = []
    for rank, index in enumerate(ranking(scores, top_n), 1):
        doc, score = docs[index], float(scores[index])
        if isinstance(doc, Hit):
            hits.append(doc.replace(score=score, rank=rank, stage=STAGE))
        else:
            hits.append(Hit(doc_id=str(index), score=score, rank=rank, stage=STAGE, text=doc))
    return hits

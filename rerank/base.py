"""The reranker interface and the bookkeeping every reranker shares (inputs in, ranked Hits out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit

STAGE = "rerank"


@runtime_checkable
class Reranker(Protocol):
    """Re-scores a query's candidate documents; higher scores are more relevant."""

    def rerank(self, query: str, docs: Sequence[Hit | str], top_n: int | None = None) -> list[Hit]:
        """New Hits sorted by score (best first), ranked 1..n with ``stage="rerank"``.

        Hits keep their ``doc_id``/``title``/``text``/``metadata``; a plain string becomes a
        Hit whose ``doc_id`` is its position (``"0"``, ``"1"``, ...) and whose text is the
        string. ``top_n`` keeps only the best ``top_n``; equal scores keep the input order.
        """
        ...

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One float score per ``(query, document)`` pair, in input order."""
        ...


def check_top_n(top_n: int | None) -> None:
    """Reject a ``top_n`` that would silently return nothing."""
    if top_n is None:
        return
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise ConfigError(f"top_n must be a positive integer or None, got {top_n!r}")


def document_texts(docs: Sequence[Hit | str]) -> list[str]:
    """The text to score for each input; a Hit without text is an error, not an empty doc."""
    texts: list[str] = []
    for position, doc in enumerate(docs):
        if isinstance(doc, Hit):
            if doc.text is None:
                raise ConfigError(
                    f"hit {doc.doc_id!r} (position {position}) has no text to rerank; "
                    "join the hits with the corpus (fill Hit.text) before the rerank stage"
                )
            texts.append(doc.text)
        elif isinstance(doc, str):
            texts.append(doc)
        else:
            raise ConfigError(
                f"documents to rerank must be Hit or str, got {type(doc).__name__} at position {position}"
            )
    return texts


def ranked_hits(docs: Sequence[Hit | str], scores: np.ndarray, top_n: int | None = None) -> list[Hit]:
    """Sort ``docs`` by ``scores`` (descending, stable) into ranked rerank-stage Hits."""
    if len(scores) != len(docs):
        raise ValueError(f"{len(scores)} scores for {len(docs)} documents")
    # stable sort on the negated scores: ties keep the first stage's order
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if top_n is not None:
        order = order[:top_n]
    hits: list[Hit] = []
    for rank, index in enumerate(order.tolist(), 1):
        doc, score = docs[index], float(scores[index])
        if isinstance(doc, Hit):
            hits.append(doc.replace(score=score, rank=rank, stage=STAGE))
        else:
            hits.append(Hit(doc_id=str(index), score=score, rank=rank, stage=STAGE, text=doc))
    return hits

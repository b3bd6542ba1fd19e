"""Search and rerank as the RAG-framework integrations see them: in-process or over HTTP.

Both sides have one small interface, so the LangChain and LlamaIndex adapters hold no
tansaku logic of their own: :func:`open_search` gives ``search(query, **settings) -> [Hit]``
over an index directory, an opened :class:`~tansaku.pipeline.api.Searcher` or a
``tansaku serve`` URL; :func:`open_reranker` gives ``rerank(query, texts, top_n) -> [(index,
score)]`` over a reranker model (directory or hub id), a reranker object or a server URL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit, indexed_text
from tansaku.rerank.base import Reranker, rank_texts

from ..api import Searcher, open_index
from ..search import default_rerank_k
from .client import DEFAULT_TIMEOUT_S, TansakuClient

SEARCH_SETTINGS = ("top_n", "retrieve_k", "rerank_k", "mode", "filter")
"""What a search call may set (None: the searcher's or server's default)."""


class SearchBackend(Protocol):
    def search(
        self,
        query: str,
        *,
        top_n: int | None = None,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Ranked hits with title, text and metadata."""
        ...


class RerankBackend(Protocol):
    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        """``(position in texts, score in [0, 1])`` pairs, best first."""
        ...


class LocalSearch:
    """A :class:`Searcher` called one query at a time.

    Frameworks run retrievers on worker threads, and a Searcher's SQLite connection and MeCab
    tagger must not be used by two threads at once.
    """

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher
        self._lock = threading.Lock()

    def search(
        self,
        query: str,
        *,
        top_n: int | None = None,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        overrides: dict[str, Any] = {
            "top_n": top_n,
            "retrieve_k": retrieve_k,
            "rerank_k": rerank_k,
            "mode": mode,
        }
        if retrieve_k is not None:
            # as the server does: a smaller retrieve_k alone shrinks the default rerank_k
            overrides["rerank_k"] = default_rerank_k(retrieve_k, rerank_k, cap=self.searcher.config.rerank_k)
        if filter is not None:  # only when given, so searchers without filters still work
            overrides["filter"] = filter
        with self._lock:
            result = self.searcher.search(query, **{k: v for k, v in overrides.items() if v is not None})
        return result.hits


class LocalRerank:
    """A tansaku reranker (e.g. :class:`~tansaku.rerank.CrossEncoderReranker`), one call at a time.

    One call at a time because Hugging Face fast tokenizers refuse concurrent use
    ("Already borrowed").
    """

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker
        self._lock = threading.Lock()

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        with self._lock:
            ranked = rank_texts(self.reranker, query, list(texts), top_n)
        return [(r.index, r.score) for r in ranked]


class RemoteSearch:
    """``POST /v1/search`` of a ``tansaku serve``."""

    def __init__(self, client: TansakuClient) -> None:
        self.client = client

    def search(
        self,
        query: str,
        *,
        top_n: int | None = None,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        return self.client.search(
            query, top_n=top_n, retrieve_k=retrieve_k, rerank_k=rerank_k, mode=mode, filter=filter
        )


class RemoteRerank:
    """``POST /v1/rerank`` of a ``tansaku serve`` (``model``, when given, must name its reranker)."""

    def __init__(self, client: TansakuClient, model: str | None = None) -> None:
        self.client = client
        self.model = model

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[tuple[int, float]]:
        return self.client.rerank(query, texts, top_n=top_n, model=self.model)


def open_search(
    index: str | os.PathLike[str] | Searcher | None = None,
    *,
    url: str | None = None,
    reranker: Any | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> LocalSearch | RemoteSearch:
    """Search over ``index`` (a directory or an opened Searcher) or the server at ``url``.

    ``reranker`` (a model directory/hub id or a reranker object) only applies to an index
    directory: a Searcher already has its settings, and a server has its ``--reranker``.
    """
    if (index is None) == (url is None):
        raise ConfigError(
            "give either index= (an index directory or a tansaku.open() searcher) "
            "or url= (a tansaku serve address), not both or neither"
        )
    if url is not None:
        if reranker is not None:
            raise ConfigError(
                "reranker= does not apply with url=: the server reranks with its own --reranker"
            )
        return RemoteSearch(TansakuClient(url, api_key=api_key, timeout=timeout))
    if isinstance(index, Searcher):
        if reranker is not None:
            raise ConfigError(
                "reranker= does not apply to an opened searcher: pass it to "
                "tansaku.open(path, reranker=...) instead"
            )
        return LocalSearch(index)
    if isinstance(index, str) and index.startswith(("http://", "https://")):
        raise ConfigError(f"index={index!r} is a URL: pass it as url=")
    if not isinstance(index, str | os.PathLike):
        raise ConfigError(
            f"index must be an index directory or a tansaku.open() searcher, got {type(index).__name__}"
        )
    return LocalSearch(open_index(index, reranker=reranker))


def open_reranker(
    model: Any | None = None,
    *,
    url: str | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> LocalRerank | RemoteRerank:
    """Rerank with ``model`` in-process, or with the server at ``url``.

    In-process, ``model`` is a model directory or hub id (loaded as a
    :class:`~tansaku.rerank.CrossEncoderReranker`) or a ready reranker object. With ``url``,
    ``model`` is the optional model name sent to the server, which checks it.
    """
    if url is not None:
        if model is not None and not isinstance(model, str):
            raise ConfigError(
                "with url=, model= is the name of the server's reranker (a string), "
                f"got {type(model).__name__}"
            )
        return RemoteRerank(TansakuClient(url, api_key=api_key, timeout=timeout), model or None)
    if model is None:
        raise ConfigError(
            "give model= (a reranker model directory, hub id or reranker object) "
            "or url= (a tansaku serve address)"
        )
    if isinstance(model, str | os.PathLike):
        from tansaku.rerank import CrossEncoderReranker

        return LocalRerank(CrossEncoderReranker(model))
    if not callable(getattr(model, "rerank", None)):
        raise ConfigError(
            f"model must be a model directory, hub id or an object with a "
            f"rerank(query, docs, top_n) method, got {type(model).__name__}"
        )
    return LocalRerank(model)


def rerank_text(text: str, title: Any) -> str:
    """What the reranker reads: ``"title text"`` as tansaku's pipeline scores it, or the text."""
    return indexed_text(title if isinstance(title, str) else None, text)

"""LangChain integration: tansaku as a retriever and as a document reranker.

Needs the ``langchain`` extra (``pip install 'tansaku[langchain]'``: langchain-core, httpx).

>>> from tansaku.pipeline.integrations.langchain import TansakuRetriever, TansakuReranker  # doctest: +SKIP
>>> retriever = TansakuRetriever(index="my-index", top_n=5)                 # doctest: +SKIP
>>> retriever = TansakuRetriever(url="http://127.0.0.1:8080")               # doctest: +SKIP
>>> docs = retriever.invoke("富士山の高さ")                                    # doctest: +SKIP
>>> reranker = TansakuReranker(model="/models/reranker", top_n=3)              # doctest: +SKIP
>>> reranker.compress_documents(docs, "富士山の高さ")                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tansaku.index.checks import check_optional_int
from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as exc:  # the extra is optional; say which one to install
    raise ImportError(
        "tansaku.pipeline.integrations.langchain needs langchain-core: pip install 'tansaku[langchain]'"
    ) from exc
from pydantic import ConfigDict, Field, PrivateAttr

from .backends import (
    SEARCH_SETTINGS,
    LocalSearch,
    RemoteSearch,
    open_search,
)
from .client import DEFAULT_TIMEOUT_S
from .reranker_fields import RerankerFields

__all__ = ["TansakuReranker", "TansakuRetriever", "hit_to_document"]


def hit_to_document(hit: Hit) -> Document:
    """A Document: ``page_content`` is the record's text, ``id`` its id; ``metadata`` holds the
    record's metadata plus ``id``, ``title`` (when it has one), ``score``, ``rank`` and
    ``stage``, which win over record metadata keys of the same name."""
    metadata: dict[str, Any] = {
        **hit.metadata,
        "id": hit.doc_id,
        "score": hit.score,
        "rank": hit.rank,
        "stage": hit.stage,
    }
    if hit.title is not None:
        metadata["title"] = hit.title
    return Document(page_content=hit.text or "", metadata=metadata, id=hit.doc_id)


class TansakuRetriever(BaseRetriever):
    """A LangChain retriever over a tansaku index (in-process) or a ``tansaku serve`` server.

    Give ``index`` (an index directory, optionally with ``reranker``, or a ``tansaku.open()``
    searcher) or ``url`` (with ``api_key`` if the server has one). ``top_n``, ``retrieve_k``,
    ``rerank_k`` and ``mode`` default to the searcher's or server's settings; ``filter`` is a
    metadata filter such as ``{"lang": "ja", "year": {"$gte": 2020}}`` (see
    :mod:`tansaku.index.filters`). Any of them can also be given per call:
    ``retriever.invoke(query, top_n=3, filter={...})``. Documents come back best first (see
    :func:`hit_to_document`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any = Field(None, description="index directory or tansaku.open() searcher")
    url: str | None = Field(None, description="address of a tansaku serve server")
    reranker: Any = Field(None, description="with an index directory: reranker model or object")
    api_key: str | None = Field(None, repr=False, description="the server's --api-key")
    timeout: float = DEFAULT_TIMEOUT_S
    top_n: int | None = None
    retrieve_k: int | None = None
    rerank_k: int | None = None
    mode: str | None = None
    filter: dict[str, Any] | None = None

    _backend: LocalSearch | RemoteSearch = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        # checked here rather than in pydantic validators, so the errors stay ConfigErrors
        for name in ("top_n", "retrieve_k", "rerank_k"):
            check_optional_int(name, data.get(name))
        super().__init__(**data)
        index = os.fspath(self.index) if isinstance(self.index, os.PathLike) else self.index
        self._backend = open_search(
            index, url=self.url, reranker=self.reranker, api_key=self.api_key, timeout=self.timeout
        )

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        unknown = sorted(set(overrides) - set(SEARCH_SETTINGS))
        if unknown:
            raise ConfigError(
                f"unknown search setting(s) {unknown}; TansakuRetriever takes {', '.join(SEARCH_SETTINGS)}"
            )
        settings = {name: getattr(self, name) for name in SEARCH_SETTINGS}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("top_n", "retrieve_k", "rerank_k"):
            check_optional_int(name, settings[name])
        return [hit_to_document(hit) for hit in self._backend.search(query, **settings)]


class TansakuReranker(RerankerFields, BaseDocumentCompressor):
    """Reorders any retriever's Documents with a tansaku cross-encoder (a document compressor).

    In-process: ``model`` is a reranker model directory or hub id, or a reranker object such
    as :class:`~tansaku.rerank.CrossEncoderReranker`. Remote: ``url`` of a ``tansaku serve``
    with a ``--reranker`` (``model``, if given, must name it). Returns the best ``top_n``
    Documents (default: all, reordered), each a copy with ``metadata["relevance_score"]`` in
    [0, 1], as LangChain's Cohere reranker does. A Document's ``metadata[title_key]``, when it
    is a non-empty string, is read before its text ("title text"), as tansaku's own pipeline
    scores records; ``title_key=None`` scores ``page_content`` alone.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best ``top_n`` of ``documents`` for ``query``, best first."""
        docs = list(documents)
        if not docs:
            return []
        titles = [d.metadata.get(self.title_key) if self.title_key else None for d in docs]
        return [
            Document(
                page_content=docs[i].page_content,
                id=docs[i].id,
                metadata={**docs[i].metadata, "relevance_score": score},
            )
            for i, score in self._ranked(query, [d.page_content for d in docs], titles)
        ]

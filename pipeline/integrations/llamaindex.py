"""LlamaIndex integration: tansaku as a retriever and as a node postprocessor (reranker).

Needs the ``llamaindex`` extra (``pip install 'tansaku[llamaindex]'``: llama-index-core, httpx).

>>> from tansaku.pipeline.integrations.llamaindex import TansakuRetriever, TansakuReranker  # doctest: +SKIP
>>> retriever = TansakuRetriever(index="my-index", top_n=5)                  # doctest: +SKIP
>>> nodes = retriever.retrieve("富士山の高さ")                                  # doctest: +SKIP
>>> TansakuReranker(url="http://127.0.0.1:8080").postprocess_nodes(          # doctest: +SKIP
...     nodes, query_str="富士山の高さ")
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from tansaku.index.checks import check_optional_int
from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # the extra is optional; say which one to install
    raise ImportError(
        "tansaku.pipeline.integrations.llamaindex needs llama-index-core: pip install 'tansaku[llamaindex]'"
    ) from exc

from .backends import open_search
from .client import DEFAULT_TIMEOUT_S
from .reranker_fields import RerankerFields

__all__ = ["TansakuReranker", "TansakuRetriever", "hit_to_node"]


def hit_to_node(hit: Hit) -> NodeWithScore:
    """A TextNode (``id_`` the record's id, its text, its metadata plus ``title`` when it has
    one) with the hit's score."""
    metadata = dict(hit.metadata)
    if hit.title is not None:
        metadata["title"] = hit.title
    return NodeWithScore(
        node=TextNode(id_=hit.doc_id, text=hit.text or "", metadata=metadata), score=hit.score
    )


class TansakuRetriever(BaseRetriever):
    """A LlamaIndex retriever over a tansaku index (in-process) or a ``tansaku serve`` server.

    Give ``index`` (an index directory, optionally with ``reranker``, or a ``tansaku.open()``
    searcher) or ``url`` (with ``api_key`` if the server has one). ``top_n``, ``retrieve_k``,
    ``rerank_k`` and ``mode`` default to the searcher's or server's settings; ``filter`` is a
    tansaku metadata filter such as ``{"lang": "ja", "year": {"$gte": 2020}}`` (see
    :mod:`tansaku.index.filters`). They are plain attributes, so they can be changed between
    queries. Nodes come back best first (see :func:`hit_to_node`).
    """

    def __init__(
        self,
        index: str | os.PathLike[str] | Any | None = None,
        *,
        url: str | None = None,
        reranker: Any | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        top_n: int | None = None,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.top_n, self.retrieve_k, self.rerank_k = top_n, retrieve_k, rerank_k
        self.mode, self.filter = mode, filter
        self._check()
        self._backend = open_search(index, url=url, reranker=reranker, api_key=api_key, timeout=timeout)

    def _check(self) -> None:
        for name in ("top_n", "retrieve_k", "rerank_k"):
            check_optional_int(name, getattr(self, name))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self._check()
        hits = self._backend.search(
            query_bundle.query_str,
            top_n=self.top_n,
            retrieve_k=self.retrieve_k,
            rerank_k=self.rerank_k,
            mode=self.mode,
            filter=self.filter,
        )
        return [hit_to_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # searching (and reranking) is CPU work or a blocking HTTP call: keep the loop free
        return await asyncio.to_thread(self._retrieve, query_bundle)


class TansakuReranker(RerankerFields, BaseNodePostprocessor):
    """Reorders any retriever's nodes with a tansaku cross-encoder (a node postprocessor).

    In-process: ``model`` is a reranker model directory or hub id, or a reranker object such
    as :class:`~tansaku.rerank.CrossEncoderReranker`. Remote: ``url`` of a ``tansaku serve``
    with a ``--reranker`` (``model``, if given, must name it). Returns the best ``top_n`` nodes
    (default: all, reordered) with the reranker's score in [0, 1]. A node's
    ``metadata[title_key]``, when it is a non-empty string, is read before its text
    ("title text"), as tansaku's own pipeline scores records; ``title_key=None`` scores the
    node's text alone.
    """

    @classmethod
    def class_name(cls) -> str:
        return "TansakuReranker"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ConfigError(
                "TansakuReranker needs the query: call postprocess_nodes(nodes, "
                "query_str=...) or use it in a query engine"
            )
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        titles = [n.node.metadata.get(self.title_key) if self.title_key else None for n in nodes]
        return [
            NodeWithScore(node=nodes[i].node, score=score)
            for i, score in self._ranked(query_bundle.query_str, texts, titles)
        ]

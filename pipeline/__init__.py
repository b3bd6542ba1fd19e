"""tansaku.pipeline: the search API and SearchPipeline, plus products built on them.

``api``, ``search`` and ``rerank_fusion`` are the core Python API; ``cli`` is the ``tansaku``
command, ``serve`` the HTTP server, ``eval`` evaluation, ``integrations`` the LangChain,
LlamaIndex and HTTP-client adapters, and ``train`` the reranker training pipeline.

The names below are imported on first use, so that importing a subpackage (the CLI above
all: ``tansaku --help``) does not load the index stack (numpy, faiss, numba).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SearchConfig": "api",
    "Searcher": "api",
    "open_index": "api",
    "SearchPipeline": "search",
    "SearchResult": "search",
}

__all__ = ["SearchConfig", "SearchPipeline", "SearchResult", "Searcher", "open_index"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)

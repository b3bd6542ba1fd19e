"""tansaku (探索): Japanese-first two-stage retrieve-and-rerank search.

The stages live in their own subpackages: ``tansaku.index`` (corpus, analyzers,
BM25 and FAISS files), ``tansaku.retrieve`` (first-stage retrievers),
``tansaku.rerank`` (cross-encoders) and ``tansaku.pipeline`` (the search API,
CLI, evaluation and server that compose them).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "open"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `import tansaku` stays cheap (no torch/faiss at import).
    if name == "open":
        from tansaku.pipeline.api import open_index

        return open_index
    raise AttributeError(f"module 'tansaku' has no attribute {name!r}")

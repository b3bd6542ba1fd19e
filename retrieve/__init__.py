"""tansaku.retrieve: first-stage retrievers over an index (BM25, dense, hybrid fusion)."""

from dataclasses import replace

from tansaku.index.errors import ConfigError
from tansaku.index.sharded import SearchIndex

from .base import Retriever
from .bm25 import BM25Retriever
from .dense import DenseRetriever
from .fusion import minmax, reciprocal_rank_fusion, score_fusion
from .hybrid import FusionConfig, HybridRetriever, default_weights

MODES = ("bm25", "dense", "hybrid")


def make_retriever(
    index: SearchIndex, mode: str = "bm25", *, fusion: FusionConfig | None = None, nprobe: int | None = None
) -> Retriever:
    """The retriever for a search ``mode``: ``bm25``, ``dense`` or ``hybrid``."""
    if mode == "bm25":
        return BM25Retriever(index)
    if mode == "dense":
        return DenseRetriever(index, nprobe=nprobe)
    if mode == "hybrid":
        fusion = fusion or FusionConfig()
        if fusion.method == "score" and fusion.weights is None:
            dense = index.manifest.dense.encoder if index.manifest.dense else {}
            fusion = replace(fusion, weights=default_weights(dense.get("type")))
        return HybridRetriever([BM25Retriever(index), DenseRetriever(index, nprobe=nprobe)], fusion)
    raise ConfigError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")


__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "FusionConfig",
    "HybridRetriever",
    "MODES",
    "Retriever",
    "default_weights",
    "make_retriever",
    "minmax",
    "reciprocal_rank_fusion",
    "score_fusion",
]

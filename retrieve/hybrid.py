"""Hybrid retrieval: several retrievers' candidate lists fused into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tansaku.index.errors import ConfigError
from tansaku.index.filters import FilterSpec, parse_filter
from tansaku.index.hit import Hit

from .base import Retriever, check_k
from .fusion import reciprocal_rank_fusion, score_fusion

FUSIONS = ("rrf", "score")


@dataclass(frozen=True)
class FusionConfig:
    """``score`` (per-query min-max normalised weighted sum) or ``rrf`` (rank-based, k=60).

    ``weights`` pair with the retrievers in order (None: equal, or for BM25 + dense built by
    :func:`~tansaku.retrieve.make_retriever`, the index's default); ``depth`` is how
    many candidates each retriever contributes (at least the requested k).

    The default is score fusion with the index's dense weight (``weights=None``, see
    :func:`default_weights`). RRF fell below BM25 on JSQuAD (its rank-only votes let the
    weaker dense list pull good BM25 hits down), score fusion did not.
    """

    method: str = "score"
    rrf_k: int = 60
    weights: tuple[float, ...] | None = None
    depth: int = 100

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.method!r}")
        if self.rrf_k < 0 or self.depth < 1:
            raise ConfigError("fusion needs rrf_k >= 0 and depth >= 1")


# Dense weight in score fusion (BM25 gets 1 - w), per encoder type, chosen on the tune half
# of JSQuAD's articles over the `ja` analyzer (scripts/tune_bm25.py, scripts/bench_quality.py):
# e5-small 0.35 (tune nDCG@10 0.9593 vs BM25 0.9551; check 0.9677 vs 0.9634), the static
# corpus encoder 0.15 (0.9550 vs 0.9551; check 0.9650 vs 0.9634; equal weights fell below
# BM25: 0.9545 vs 0.9583 on all questions). Hub models default like e5-small.
DENSE_WEIGHTS = {"corpus": 0.15}
DEFAULT_DENSE_WEIGHT = 0.35


def default_weights(encoder_type: str | None) -> tuple[float, float]:
    """(BM25, dense) score-fusion weights for an index whose encoder has ``encoder_type``."""
    dense = DENSE_WEIGHTS.get(encoder_type or "", DEFAULT_DENSE_WEIGHT)
    return (1.0 - dense, dense)


class HybridRetriever:
    """Runs each retriever and fuses their lists."""

    stage = "hybrid"

    def __init__(self, retrievers: Sequence[Retriever], fusion: FusionConfig = FusionConfig()) -> None:
        if len(retrievers) < 2:
            raise ConfigError("a hybrid retriever needs at least two retrievers")
        if fusion.weights is not None and len(fusion.weights) != len(retrievers):
            raise ConfigError(f"{len(fusion.weights)} fusion weights for {len(retrievers)} retrievers")
        self.retrievers = list(retrievers)
        self.fusion = fusion

    def _fuse(self, lists: list[list[Hit]], k: int) -> list[Hit]:
        weights = self.fusion.weights or tuple(1.0 for _ in lists)
        if self.fusion.method == "rrf":
            return reciprocal_rank_fusion(lists, k, rrf_k=self.fusion.rrf_k, weights=weights)
        return score_fusion(lists, k, weights=weights)

    def retrieve(self, query: str, k: int = 100, *, filter: FilterSpec = None) -> list[Hit]:
        return self.retrieve_batch([query], k, filter=filter)[0]

    def retrieve_batch(
        self, queries: Sequence[str], k: int = 100, *, filter: FilterSpec = None
    ) -> list[list[Hit]]:
        """Each retriever's (filtered) list, fused; a ``filter`` applies to every retriever."""
        check_k(k)
        depth = max(k, self.fusion.depth)
        parsed = parse_filter(filter)  # once, so a bad filter fails before any retriever runs
        extra = {} if parsed is None else {"filter": parsed}
        per_retriever = [r.retrieve_batch(queries, depth, **extra) for r in self.retrievers]
        return [self._fuse([lists[i] for lists in per_retriever], k) for i in range(len(queries))]

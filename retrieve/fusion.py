"""Fusing ranked lists: reciprocal rank fusion and normalised weighted score fusion."""

from __future__ import annotations

from collections.abc import Sequence

from tansaku.index.hit import Hit


def _sorted_hits(scores: dict[str, float], k: int, stage: str) -> list[Hit]:
    # Ties break by doc id so fusion is deterministic whatever the input order.
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [Hit(doc_id, score, rank, stage) for rank, (doc_id, score) in enumerate(best, 1)]


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[Hit]],
    k: int,
    *,
    rrf_k: int = 60,
    weights: Sequence[float] | None = None,
    stage: str = "hybrid",
) -> list[Hit]:
    """RRF (Cormack et al. 2009): score(d) = Σ wᵢ / (rrf_k + rankᵢ(d))."""
    weights = weights or [1.0] * len(lists)
    scores: dict[str, float] = {}
    for hits, w in zip(lists, weights, strict=True):
        for hit in hits:
            scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + w / (rrf_k + hit.rank)
    return _sorted_hits(scores, k, stage)


def minmax(hits: Sequence[Hit]) -> dict[str, float]:
    """Scores scaled to [0, 1] within one list (all 1.0 when they are equal)."""
    if not hits:
        return {}
    values = [h.score for h in hits]
    lo, hi = min(values), max(values)
    span = hi - lo
    return {h.doc_id: (h.score - lo) / span if span > 0 else 1.0 for h in hits}


def score_fusion(
    lists: Sequence[Sequence[Hit]], k: int, *, weights: Sequence[float], stage: str = "hybrid"
) -> list[Hit]:
    """Σ wᵢ · minmaxᵢ(score); a document missing from a list gets 0 from it."""
    scores: dict[str, float] = {}
    for hits, w in zip(lists, weights, strict=True):
        for doc_id, s in minmax(hits).items():
            scores[doc_id] = scores.get(doc_id, 0.0) + w * s
    return _sorted_hits(scores, k, stage)

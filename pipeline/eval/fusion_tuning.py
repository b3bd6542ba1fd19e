"""Choosing the first-stage/reranker fusion weight on judged queries (a small evaluation sweep).

Used by ``tansaku train-reranker`` (on its held-out queries) and the reranker benchmarks; the
fusion itself, used at search time, is :func:`tansaku.pipeline.rerank_fusion.fuse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit

from ..rerank_fusion import fuse
from .metrics import evaluate

DEFAULT_GRID = tuple(round(i / 10, 1) for i in range(11))


def sweep_fusion_weights(
    first_stage: Mapping[str, Sequence[Hit]],
    reranked: Mapping[str, Sequence[Hit]],
    qrels: Mapping[str, Mapping[str, int]],
    grid: Sequence[float] = DEFAULT_GRID,
    metric: str = "ndcg@10",
) -> dict[float, float]:
    """``metric`` of the fused ranking for each weight in ``grid`` (mean over ``qrels``' queries)."""
    qids = [q for q in qrels if q in reranked]
    if not qids:
        raise ConfigError("no reranked queries with judgements to choose a fusion weight on")
    judged = {q: qrels[q] for q in qids}
    out = {}
    for w in grid:
        run = {q: {h.doc_id: h.score for h in fuse(first_stage[q], reranked[q], w)} for q in qids}
        out[float(w)] = evaluate(judged, run, [metric])[metric]
    return out


def best_weight(scores: Mapping[float, float]) -> float:
    """The weight with the best score; among equal scores the one nearest the reranker (largest)."""
    return max(scores, key=lambda w: (round(scores[w], 10), w))

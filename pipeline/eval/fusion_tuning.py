"""Choosing the first-stage/reranker fusion weight on judged queries (a small evaluation sweep).

Used by ``tansaku train-reranker`` (on its held-out queries) and the reranker benchmarks; the
fusion itself, used at search time, is :func:`tansaku.pipeline.rerank_fusion.fuse`.

The weight a trained model records as its search default is chosen by :func:`decide_weight`:
the sweep's best weight only when it beat the first stage (weight 0) by a margin the held-out
set can resolve, else 0 (the first stage's order: by default a trained model cannot make
searches worse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit

from ..rerank_fusion import fuse
from .metrics import per_query

DEFAULT_GRID = tuple(round(i / 10, 1) for i in range(11))
# Below this many held-out queries one query moves mean nDCG@10 by 0.05 or more: more than
# fusion weights usually differ by, so no choice among them means anything.
MIN_HELD_OUT_QUERIES = 20
# One-sided level of the sign test, the threshold of a two-sided 5 % test: the best of several
# weights is the one tested, so the bar is stricter than a one-sided 5 %.
SIGN_TEST_ALPHA = 0.025
RULE = (
    f"the sweep's best weight becomes the default only with at least {MIN_HELD_OUT_QUERIES} "
    "held-out queries, a higher mean nDCG@10 than the first stage (weight 0), and more "
    "held-out queries improved than worsened by a one-sided exact sign test at the "
    f"{SIGN_TEST_ALPHA:g} level (tied queries left out); otherwise the default is 0"
)


def sweep_per_query(
    first_stage: Mapping[str, Sequence[Hit]],
    reranked: Mapping[str, Sequence[Hit]],
    qrels: Mapping[str, Mapping[str, int]],
    grid: Sequence[float] = DEFAULT_GRID,
    metric: str = "ndcg@10",
) -> dict[float, dict[str, float]]:
    """weight -> query id -> ``metric`` of the fused ranking, for the reranked judged queries."""
    qids = [q for q in qrels if q in reranked]
    if not qids:
        raise ConfigError("no reranked queries with judgements to choose a fusion weight on")
    judged = {q: qrels[q] for q in qids}
    out = {}
    for w in grid:
        run = {q: {h.doc_id: h.score for h in fuse(first_stage[q], reranked[q], w)} for q in qids}
        out[float(w)] = per_query(judged, run, [metric])[metric]
    return out


def sweep_fusion_weights(
    first_stage: Mapping[str, Sequence[Hit]],
    reranked: Mapping[str, Sequence[Hit]],
    qrels: Mapping[str, Mapping[str, int]],
    grid: Sequence[float] = DEFAULT_GRID,
    metric: str = "ndcg@10",
) -> dict[float, float]:
    """``metric`` of the fused ranking for each weight in ``grid`` (mean over ``qrels``' queries)."""
    return {w: _mean(v) for w, v in sweep_per_query(first_stage, reranked, qrels, grid, metric).items()}


def best_weight(scores: Mapping[float, float]) -> float:
    """The weight with the best score; among equal scores the one nearest the reranker (largest)."""
    return max(scores, key=lambda w: (round(scores[w], 10), w))


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


@dataclass(frozen=True)
class FusionDecision:
    """The default fusion weight a held-out sweep supports, and why.

    ``best`` is the sweep's best weight; ``weight`` the default to record (``best`` when
    ``beat_first_stage``, else 0).
    ``wins``/``losses``/``ties`` count held-out queries where ``best`` scored above, below or
    the same as the first stage (weight 0); ``p_value`` is the sign test's.
    """

    weight: float
    best: float
    queries: int
    wins: int
    losses: int
    ties: int
    p_value: float
    beat_first_stage: bool
    reason: str


def decide_weight(per_query_scores: Mapping[float, Mapping[str, float]]) -> FusionDecision:
    """The default weight by :data:`RULE`, from :func:`sweep_per_query`'s scores (weight 0 included)."""
    means = {w: _mean(v) for w, v in per_query_scores.items()}
    if 0.0 not in means:
        raise ConfigError("the fusion sweep must include weight 0 (the first stage alone)")
    best = best_weight(means)
    first, chosen = per_query_scores[0.0], per_query_scores[best]
    diffs = [chosen[q] - first[q] for q in first]
    wins, losses = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
    n, p = len(diffs), sign_test_p(wins, losses)
    tally = (
        f"w = {best:g} beat the first stage on {wins} of {n} held-out queries and lost on {losses} "
        f"(nDCG@10 {means[best]:.4f} vs {means[0.0]:.4f}, sign test p = {p:.3g})"
    )
    helped = best != 0.0 and means[best] > means[0.0]
    if n < MIN_HELD_OUT_QUERIES:
        reason = (
            f"only {n} held-out queries, fewer than the {MIN_HELD_OUT_QUERIES} needed to choose a "
            "fusion weight" + (f"; {tally}" if helped else "")
        )
    elif not helped:
        reason = f"the first stage alone (w = 0) scored best on the {n} held-out queries"
    elif p >= SIGN_TEST_ALPHA:
        reason = f"{tally}: not a margin {n} queries can resolve (p must be below {SIGN_TEST_ALPHA:g})"
    else:
        return FusionDecision(best, best, n, wins, losses, n - wins - losses, p, True, tally)
    return FusionDecision(0.0, best, n, wins, losses, n - wins - losses, p, False, reason)


def fusion_record(
    per_query_scores: Mapping[float, Mapping[str, float]], *, first_stage: str, rerank_k: int, chosen_on: str
) -> dict[str, Any]:
    """The ``fusion`` record a reranker's manifest keeps: the default weight by :data:`RULE`
    (:func:`decide_weight`), the sweep's means, the test behind the choice and its context."""
    decision = decide_weight(per_query_scores)
    return {
        "weight": decision.weight,
        "metric": "ndcg@10",
        "by_weight": {f"{w:g}": round(_mean(s), 6) for w, s in per_query_scores.items()},
        "best_weight": decision.best,
        "beat_first_stage": decision.beat_first_stage,
        "reason": decision.reason,
        "test": {
            "wins": decision.wins,
            "losses": decision.losses,
            "ties": decision.ties,
            "p_value": round(decision.p_value, 6),
            "rule": RULE,
        },
        "first_stage": first_stage,
        "rerank_k": rerank_k,
        "held_out_queries": decision.queries,
        "chosen_on": chosen_on,
    }


def _mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0

"""Fusing first-stage and reranker scores at search time (the weight is tuned in eval.fusion_tuning).

Why: a reranker trained on little data can be weaker alone than BM25/hybrid, yet still
know things the first stage does not. The final score
``w · minmax(reranker) + (1 - w) · minmax(first stage)`` (per query, over the reranked
candidates) keeps both; ``w = 1`` is pure reranker order, ``w = 0`` the first stage's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tansaku.index.errors import ConfigError
from tansaku.index.hit import Hit
from tansaku.rerank.base import ModelReranker, Reranker
from tansaku.retrieve import minmax


def check_fusion_weight(weight: Any, name: str = "rerank_fusion_weight (--rerank-fusion)") -> float:
    """``weight`` as a float in [0, 1]; anything else is a ConfigError naming ``name``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ConfigError(
            f"{name} must be a number in [0, 1] (1 = pure reranker order, "
            f"0 = first-stage order), got {weight!r}"
        )
    return float(weight)


def fuse(
    first_stage: Sequence[Hit], reranked: Sequence[Hit], weight: float, top_n: int | None = None
) -> list[Hit]:
    """The reranked hits re-ordered by the fused score (which becomes their score).

    Both score lists are min-max normalised over the reranked candidates only, so the
    first stage's scale (BM25, cosine, fused) never matters. Ties keep the reranker's order.
    """
    check_fusion_weight(weight)
    head = {h.doc_id for h in reranked}
    first = minmax([h for h in first_stage if h.doc_id in head])
    second = minmax(reranked)
    scored = [
        (weight * second[h.doc_id] + (1 - weight) * first.get(h.doc_id, 0.0), i, h)
        for i, h in enumerate(reranked)
    ]
    scored.sort(key=lambda t: (-t[0], t[1]))
    if top_n is not None:
        scored = scored[:top_n]
    return [h.replace(score=s, rank=rank) for rank, (s, _, h) in enumerate(scored, 1)]


def recorded_defaults(reranker: Reranker) -> tuple[float, str | None]:
    """The fusion weight a trained reranker directory records (else 1.0) and the first stage it
    was chosen with (else None), from one read of its manifest."""
    from tansaku.rerank.training import recorded_fusion

    weight, stage = (
        recorded_fusion(reranker.model_name) if isinstance(reranker, ModelReranker) else (None, None)
    )
    return (1.0 if weight is None else check_fusion_weight(weight)), stage

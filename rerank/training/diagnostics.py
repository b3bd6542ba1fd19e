"""Did training learn anything? A check of the loss curve, said as a warning when it did not.

The rule (documented in ``tansaku train-reranker --help`` and docs/training.md): the mean loss
of the last ``w`` steps must be at least :data:`MIN_LOSS_DROP` (5 %) below the mean of the
first ``w``, where ``w`` is a quarter of the steps, at most 50 (windows that never overlap,
wide enough to average out how hard single groups are). With fewer than
:data:`MIN_STEPS_TO_JUDGE` steps the curve is too short to tell, which is said too.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_STEPS_TO_JUDGE = 8
MIN_LOSS_DROP = 0.05
MAX_WINDOW = 50


def loss_windows(losses: Sequence[float]) -> tuple[float, float, int]:
    """(mean of the first ``w`` losses, mean of the last ``w``, ``w``) for the rule above."""
    w = max(1, min(MAX_WINDOW, len(losses) // 4))
    return sum(losses[:w]) / w, sum(losses[-w:]) / w, w


def loss_warning(losses: Sequence[float]) -> str | None:
    """A ``warning: ...`` line when the loss did not fall (or cannot be judged), else None."""
    n = len(losses)
    if n == 0:
        return None
    if n < MIN_STEPS_TO_JUDGE:
        return (
            f"warning: only {n} training steps, too few to tell whether the loss fell "
            f"(at least {MIN_STEPS_TO_JUDGE} are needed); the model may not have learnt anything"
        )
    first, last, w = loss_windows(losses)
    if last <= first * (1 - MIN_LOSS_DROP):
        return None
    return (
        f"warning: the training loss did not fall (mean of the first {w} steps {first:.4f}, "
        f"of the last {w} {last:.4f}; at least {MIN_LOSS_DROP:.0%} lower was expected): the "
        "model has probably learnt little; try more pairs, more --epochs or a higher --lr, "
        "and check that the positives are right"
    )

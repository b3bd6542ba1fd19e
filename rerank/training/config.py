"""The training hyper-parameters (:class:`TrainConfig`) and their validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tansaku.index.checks import check_int
from tansaku.index.errors import ConfigError

LOSSES = ("listwise", "bce")
# config fields that change the arithmetic; a resumed run must agree on all of them
RUN_FIELDS = (
    "loss",
    "epochs",
    "learning_rate",
    "warmup_ratio",
    "weight_decay",
    "max_length",
    "queries_per_step",
    "max_grad_norm",
    "seed",
    "train_embeddings",
    "freeze_layers",
    "max_steps",
    "layers",
    "micro_batch",
    "dropout",
)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    ``queries_per_step`` groups share one optimizer step. ``max_steps`` caps the run (the
    learning-rate schedule is laid out over the capped length). Word embeddings stay frozen
    unless ``train_embeddings`` (on CPU they are most of the weights and of AdamW's memory);
    ``freeze_layers`` also freezes the whole embedding block and the lowest N encoder layers.
    ``layers`` keeps only the base's lowest N encoder layers (a shallower, faster model to
    train and to serve on CPU). Pairs go through the model ``micro_batch`` at a time, sorted
    by length: on CPU 1 (no padding at all) is fastest, on a GPU larger is. ``dropout`` replaces
    every dropout probability of the model while training (None keeps the base's); it is 0 by
    default because in e5-like bases the first token's state differs between inputs by far
    less than dropout's noise, which then drowns the relevance signal (measured: no learning
    at all in 160 steps with the base's 0.1).
    ``checkpoint_every`` 0 writes a checkpoint only when a run is paused.
    """

    loss: str = "listwise"
    epochs: int = 1
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 256
    queries_per_step: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    train_embeddings: bool = False
    freeze_layers: int = 0
    max_steps: int | None = None
    layers: int | None = None
    micro_batch: int = 1
    dropout: float | None = 0.0
    checkpoint_every: int = 100
    keep_checkpoints: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("epochs", "queries_per_step", "micro_batch"):
            check_int(name, getattr(self, name), 1)
        for name in ("freeze_layers", "checkpoint_every", "seed"):
            check_int(name, getattr(self, name), 0)
        check_int("max_length", self.max_length, 8)
        for name in ("max_steps", "layers"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) or None, got {self.dropout!r}")
        if not self.weight_decay >= 0 or not self.max_grad_norm > 0:
            raise ConfigError("weight_decay must be >= 0 and max_grad_norm > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

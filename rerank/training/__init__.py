"""Fine-tune a cross-encoder reranker on (query, positive, hard negatives) groups.

``train_cross_encoder`` turns any transformers encoder into a one-logit cross-encoder that
``CrossEncoderReranker`` serves. The parts, one job each:

- :mod:`.config`: :class:`TrainConfig`, the hyper-parameters and their validation;
- :mod:`.examples`: :class:`TrainExample` groups, their checks, digest and JSONL storage;
- :mod:`.encoding`: :class:`PairEncoder`, pairs tokenised and padded as at search time;
- :mod:`.model`: the base loaded as a one-logit classifier, cut, dropout set, frozen parts;
- :mod:`.checkpoints`: save, load, latest and resume checks;
- :mod:`.diagnostics`: :func:`loss_warning`, whether the loss fell;
- :mod:`.manifest`: the reranker's :data:`MANIFEST_FILE` (what :func:`recorded_fusion` reads);
- :mod:`.loop`: the training run itself.
"""

from __future__ import annotations

from tansaku.rerank.training.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from tansaku.rerank.training.config import LOSSES, TrainConfig
from tansaku.rerank.training.diagnostics import loss_warning
from tansaku.rerank.training.encoding import PairEncoder, wants_token_types
from tansaku.rerank.training.examples import (
    EXAMPLES_FILE,
    TrainExample,
    check_examples,
    examples_digest,
    read_examples,
    write_examples,
)
from tansaku.rerank.training.loop import TrainResult, group_loss, learning_rate, train_cross_encoder
from tansaku.rerank.training.manifest import MANIFEST_FILE, read_manifest, recorded_fusion, write_manifest
from tansaku.rerank.training.model import (
    POOLER_SAMPLE_GROUPS,
    encoder_layers,
    initial_model,
    keep_lowest_layers,
    load_base,
    standardize_pooler,
)

__all__ = [
    "CHECKPOINT_DIR",
    "EXAMPLES_FILE",
    "LOSSES",
    "MANIFEST_FILE",
    "POOLER_SAMPLE_GROUPS",
    "PairEncoder",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "check_examples",
    "encoder_layers",
    "examples_digest",
    "group_loss",
    "initial_model",
    "keep_lowest_layers",
    "latest_checkpoint",
    "learning_rate",
    "load_base",
    "loss_warning",
    "read_examples",
    "read_manifest",
    "recorded_fusion",
    "standardize_pooler",
    "train_cross_encoder",
    "wants_token_types",
    "write_examples",
    "write_manifest",
]

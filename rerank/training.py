"""Fine-tune a cross-encoder reranker on (query, positive, hard negatives) groups.

Why it lives here: the loop needs nothing but texts and a base model, so the rerank stage can
train its own models; finding the hard negatives (with a retriever) is the pipeline's job.

The base is any transformers encoder (a sentence-transformers directory such as the one
``tansaku models import e5-small`` writes, a plain ``BertModel``/XLM-R checkpoint, or an
existing cross-encoder), by local path or hub id. It becomes an
``AutoModelForSequenceClassification`` with one logit (for BERT: ``BertForSequenceClassification``
on the pooled ``[CLS]`` output, initialised from the base weights). Inputs are built exactly as
:class:`~tansaku.rerank.CrossEncoderReranker` builds them at search time (same pair template,
same segment ids, the document cut to its first window), so what is trained is what is served.

Losses: ``listwise`` (softmax cross-entropy over 1 positive + n negatives, the positive is the
target) or ``bce`` (binary cross-entropy on every pair). Checkpoints hold the trainable weights,
AdamW's state and the RNG state as safetensors plus a JSON file (nothing is pickled), so a run
resumed from any checkpoint ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tansaku.index.atomic import write_json
from tansaku.index.encoders.hub import load_failure, resolve
from tansaku.index.errors import ConfigError, ModelLoadError
from tansaku.rerank.windows import PairTemplate

logger = logging.getLogger(__name__)

MANIFEST_FILE = "tansaku_reranker.json"
CHECKPOINT_DIR = "checkpoints"
EXAMPLES_FILE = "examples.jsonl"
LOSSES = ("listwise", "bce")
_WEIGHTS = "trainable.safetensors"
_OPTIMIZER = "optimizer.safetensors"
_STATE = "state.json"
# config fields that change the arithmetic; a resumed run must agree on all of them
_RUN_FIELDS = (
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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class TrainExample:
    """One training group: a query, a relevant text and non-relevant (hard negative) texts."""

    query: str
    positive: str
    negatives: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "positive": self.positive, "negatives": list(self.negatives)}


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
            _check_int(name, getattr(self, name), 1)
        for name in ("freeze_layers", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), 0)
        _check_int("max_length", self.max_length, 8)
        for name in ("max_steps", "layers"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
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


@dataclass(frozen=True)
class TrainResult:
    """What a (possibly paused) training run did."""

    out_dir: Path
    steps: int
    total_steps: int
    seconds: float
    completed: bool
    mean_loss: float | None
    checkpoint: Path | None = None
    losses: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "steps": self.steps,
            "total_steps": self.total_steps,
            "seconds": round(self.seconds, 3),
            "completed": self.completed,
            "mean_loss": self.mean_loss,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
        }


# -------------------------------------------------------------------------------- model


@dataclass
class _Model:
    model: Any
    tokenizer: Any
    source: str  # what was loaded (resolved path or hub id)
    notes: list[str]
    untrained_pooler: torch.nn.Linear | None = None


def _transformer_dir(path: Path) -> Path:
    """Where a sentence-transformers directory keeps its transformer (the root for most)."""
    modules = path / "modules.json"
    if not modules.is_file():
        return path
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"base model {path}: modules.json is not valid JSON ({exc})") from exc
    for entry in entries:
        if str(entry.get("type", "")).endswith("Transformer"):
            return path / str(entry.get("path", ""))
    return path


def load_base(base: str | os.PathLike[str], *, seed: int = 0) -> _Model:
    """The base model as a one-logit sequence classifier, plus its tokenizer.

    Weights the base lacks (the classifier head) are drawn under ``seed``. A pooler whose
    weights are all zero (the e5-small import's: e5 pools by mean and never trained one) is
    reported in ``untrained_pooler``; :func:`initial_model` sets it from data.
    """
    source = resolve(base, what="base", option="--base")
    location = str(_transformer_dir(Path(source.name))) if source.local else source.name
    notes: list[str] = []
    untrained = None
    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(location, local_files_only=source.local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=source.local_files_only)
        head_kept = (
            any(
                a.endswith("ForSequenceClassification")
                for a in (getattr(config, "architectures", None) or [])
            )
            and config.num_labels == 1
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                location, num_labels=1, local_files_only=source.local_files_only, ignore_mismatched_sizes=True
            )
        notes.append("kept the base's one-logit classifier" if head_kept else "new one-logit classifier head")
        for name, module in model.named_modules():
            if (
                name.endswith("pooler.dense")
                and isinstance(module, torch.nn.Linear)
                and not torch.any(module.weight)
            ):
                untrained = module
    except Exception as exc:
        raise ModelLoadError(load_failure(source, exc, what="base", option="--base")) from exc
    model.config.num_labels = 1
    return _Model(model, tokenizer, source.name, notes, untrained)


def wants_token_types(tokenizer: Any, model: Any, template: PairTemplate) -> bool:
    """Whether inputs carry segment ids; the same rule as ``CrossEncoderReranker``."""
    import inspect

    if template.types is None or "token_type_ids" not in inspect.signature(model.forward).parameters:
        return False
    segments = getattr(model.config, "type_vocab_size", 0)
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ()) or (
        isinstance(segments, int) and segments > 1
    )


class PairEncoder:
    """(query, document) -> model features, as the reranker builds them at search time.

    A pair longer than ``max_length`` keeps the document's first window: the query is cut
    to half the room when it needs more, the document to what is left.
    """

    def __init__(self, tokenizer: Any, model: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.template = PairTemplate.from_tokenizer(tokenizer)
        self.token_types = wants_token_types(tokenizer, model, self.template)
        self.room = max_length - self.template.num_special
        if self.room < 2:
            raise ConfigError(f"max_length={max_length} leaves no room for a query and a document")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else getattr(model.config, "pad_token_id", 0) or 0)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [list(x) for x in encoded["input_ids"]]

    def features(self, query_ids: list[int], doc_ids: list[int]) -> dict[str, list[int]]:
        if len(query_ids) + len(doc_ids) > self.room:
            query_ids = query_ids[: max(1, self.room // 2)]
            doc_ids = doc_ids[: self.room - len(query_ids)]
        return self.template.build(query_ids, doc_ids, token_types=self.token_types)

    def units(self, groups: Sequence[TrainExample]) -> list[dict[str, list[int]]]:
        """Features of every (query, text) of ``groups``, positive first in each group."""
        units = []
        for group in groups:
            query_ids = self.ids([group.query])[0]
            for doc_ids in self.ids([group.positive, *group.negatives]):
                units.append(self.features(query_ids, doc_ids))
        return units

    def collate(self, units: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad ``units`` the way the tokenizer would (its pad id and padding side)."""
        width = max(len(u["input_ids"]) for u in units)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        if self.token_types:
            out["token_type_ids"] = []
        for unit in units:
            pad = width - len(unit["input_ids"])
            rows = {
                "input_ids": (unit["input_ids"], self.pad_id),
                "attention_mask": ([1] * len(unit["input_ids"]), 0),
            }
            if self.token_types:
                rows["token_type_ids"] = (unit["token_type_ids"], 0)
            for key, (values, fill) in rows.items():
                out[key].append([fill] * pad + values if left else values + [fill] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}

    def batch(self, groups: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
        """One padded batch of every pair of ``groups``."""
        return self.collate(self.units(groups))

    def logits(self, model: Any, groups: Sequence[TrainExample], micro_batch: int) -> torch.Tensor:
        """One logit per pair of ``groups`` (input order), forwarded in length-sorted micro-batches.

        Short documents never pad up to long ones: on CPU padding is pure waste.
        """
        units = self.units(groups)
        order = sorted(range(len(units)), key=lambda i: len(units[i]["input_ids"]))
        outputs = []
        for start in range(0, len(order), micro_batch):
            chunk = order[start : start + micro_batch]
            outputs.append(model(**self.collate([units[i] for i in chunk])).logits[:, 0])
        position = torch.empty(len(units), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(units))
        return torch.cat(outputs)[position]


def encoder_layers(model: Any) -> torch.nn.ModuleList | None:
    """The transformer's list of layers (BERT/XLM-R ``encoder.layer``, ModernBERT ``layers``)."""
    base = model.base_model
    for path in ("encoder.layer", "layers"):
        module: Any = base
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList):
            return module
    return None


def keep_lowest_layers(model: Any, n: int) -> None:
    """Drop all but the lowest ``n`` encoder layers (the saved config says ``n`` too)."""
    layers = encoder_layers(model)
    if layers is None or n > len(layers):
        available = "no layer list tansaku knows" if layers is None else f"{len(layers)} layers"
        raise ConfigError(f"layers={n}: the base model has {available}")
    del layers[n:]
    model.config.num_hidden_layers = n


@torch.no_grad()
def standardize_pooler(
    model: Any, pooler: torch.nn.Linear, encoder: PairEncoder, groups: Sequence[TrainExample]
) -> None:
    """Set an untrained pooler to standardise the first token's state: (h - mean) / std.

    Why: in e5 (trained with mean pooling) the first token is an attention sink whose state
    barely changes between inputs (its spread is ~0.3 % of its norm in the middle layers),
    yet what does change carries relevance. A random pooler would bury that signal and pass
    almost no gradient back; standardising it gives the classifier unit-scale features from
    the first step. Mean and std come from the pairs of ``groups``, in eval mode.
    """
    was_training = model.training
    model.eval()
    states = [
        model.base_model(**encoder.collate([unit])).last_hidden_state[0, 0] for unit in encoder.units(groups)
    ]
    model.train(was_training)
    stacked = torch.stack(states).double()
    mean, std = stacked.mean(0), stacked.std(0)
    std = std.clamp_min(float(std.max()) * 1e-3 + 1e-12)
    pooler.weight.copy_(torch.diag(1 / std).to(pooler.weight.dtype))
    pooler.bias.copy_((-mean / std).to(pooler.bias.dtype))


POOLER_SAMPLE_GROUPS = 32


def initial_model(
    base: str | os.PathLike[str], examples: Sequence[TrainExample], config: TrainConfig
) -> tuple[_Model, PairEncoder]:
    """The model training starts from (what ``train_cross_encoder`` trains), and its encoder.

    The base loaded as a classifier, cut to ``config.layers``, with ``config.dropout``, and
    an untrained pooler standardised over the first :data:`POOLER_SAMPLE_GROUPS` groups.
    """
    loaded = load_base(base, seed=config.seed)
    if config.layers:
        keep_lowest_layers(loaded.model, config.layers)
        loaded.notes.append(f"kept the lowest {config.layers} layers")
    if config.dropout is not None:
        for module in loaded.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = config.dropout
    encoder = PairEncoder(loaded.tokenizer, loaded.model, config.max_length)
    if loaded.untrained_pooler is not None:
        sample = examples[:POOLER_SAMPLE_GROUPS]
        standardize_pooler(loaded.model, loaded.untrained_pooler, encoder, sample)
        loaded.notes.append(
            f"untrained pooler set to standardise the first token "
            f"(over {sum(1 + len(e.negatives) for e in sample)} pairs)"
        )
    return loaded, encoder


# -------------------------------------------------------------------------------- training


def group_loss(logits: torch.Tensor, sizes: Sequence[int], loss: str) -> torch.Tensor:
    """Mean loss over groups; each group's first logit is its positive."""
    parts = torch.split(logits.float(), list(sizes))
    if loss == "listwise":
        return torch.stack([torch.logsumexp(g, 0) - g[0] for g in parts]).mean()
    labels = torch.cat([torch.cat([g.new_ones(1), g.new_zeros(len(g) - 1)]) for g in parts])
    return torch.nn.functional.binary_cross_entropy_with_logits(torch.cat(parts), labels)


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _freeze(model: Any, config: TrainConfig) -> None:
    if not config.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if config.freeze_layers:
        layers = encoder_layers(model)
        embeddings = getattr(model.base_model, "embeddings", None)
        if layers is None or embeddings is None or config.freeze_layers > len(layers):
            available = "no layer list tansaku knows" if layers is None else f"{len(layers)} layers"
            raise ConfigError(f"freeze_layers={config.freeze_layers}: the base model has {available}")
        for module in [embeddings, *layers[: config.freeze_layers]]:
            for p in module.parameters():
                p.requires_grad_(False)


def _optimizer(model: Any, config: TrainConfig) -> tuple[torch.optim.AdamW, dict[str, torch.nn.Parameter]]:
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # biases and LayerNorm weights take no weight decay (the usual BERT recipe)
    no_decay = [p for n, p in named.items() if p.ndim < 2]
    decay = [p for n, p in named.items() if p.ndim >= 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach=False: one code path everywhere, so resumed and uninterrupted runs match bit for bit
    return torch.optim.AdamW(groups, lr=config.learning_rate, foreach=False), named


def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _batches(n: int, config: TrainConfig) -> list[np.ndarray]:
    per_epoch = [_order(n, config.seed, e) for e in range(config.epochs)]
    q = config.queries_per_step
    out = [order[i : i + q] for order in per_epoch for i in range(0, n, q)]
    return out[: config.max_steps] if config.max_steps else out


def examples_digest(examples: Sequence[TrainExample]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(ex.to_dict(), ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _frozen_checksum(model: Any) -> float:
    # resuming rebuilds frozen weights from the base: a different base must not slip through
    with torch.no_grad():
        return float(sum(p.double().sum().item() for p in model.parameters() if not p.requires_grad))


def check_examples(examples: Sequence[TrainExample]) -> None:
    if not examples:
        raise ConfigError("no training examples: give at least one (query, positive) pair")
    for i, ex in enumerate(examples):
        if not isinstance(ex, TrainExample):
            raise ConfigError(f"training example {i} is a {type(ex).__name__}, not a TrainExample")
        if not ex.query.strip() or not ex.positive.strip():
            raise ConfigError(f"training example {i} has an empty query or positive text")
        if not ex.negatives:
            raise ConfigError(f"training example {i} ({ex.query[:40]!r}) has no negatives")


def write_examples(path: Path, examples: Sequence[TrainExample]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_examples(path: Path) -> list[TrainExample]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            out.append(TrainExample(d["query"], d["positive"], tuple(d["negatives"])))
    return out


# -------------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints``, or None."""
    root = Path(out_dir) / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("step-*") if (p / _STATE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _save_checkpoint(
    root: Path,
    step: int,
    named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.AdamW,
    state: dict[str, Any],
    keep: bool,
) -> Path:
    from safetensors.torch import save_file

    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().contiguous().clone() for n, p in named.items()}
    weights["__rng__.torch"] = torch.get_rng_state().clone()
    save_file(weights, str(tmp / _WEIGHTS))
    moments: dict[str, torch.Tensor] = {}
    for n, p in named.items():
        s = optimizer.state.get(p)
        if s:
            moments[f"{n}.exp_avg"] = s["exp_avg"].contiguous()
            moments[f"{n}.exp_avg_sq"] = s["exp_avg_sq"].contiguous()
            moments[f"{n}.step"] = torch.as_tensor(s["step"], dtype=torch.float32).reshape(1)
    save_file(moments, str(tmp / _OPTIMIZER))
    write_json(tmp / _STATE, state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if not keep:
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, named: dict[str, torch.nn.Parameter], optimizer: torch.optim.AdamW) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(path / _WEIGHTS))
    missing = sorted(set(named) - set(weights))
    if missing:
        raise ConfigError(
            f"checkpoint {path} lacks trainable weights {missing[:3]}; it was written "
            "with other frozen/trainable settings"
        )
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(weights[n])
    torch.set_rng_state(weights["__rng__.torch"])
    moments = load_file(str(path / _OPTIMIZER))
    for n, p in named.items():
        if f"{n}.exp_avg" in moments:
            optimizer.state[p] = {
                "step": moments[f"{n}.step"].reshape(()).clone(),
                "exp_avg": moments[f"{n}.exp_avg"].clone(),
                "exp_avg_sq": moments[f"{n}.exp_avg_sq"].clone(),
            }


# -------------------------------------------------------------------------------- the run


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Check the output directory; the checkpoint to resume from, if resuming."""
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"refusing to write the reranker to {out}: it is a file; choose a directory for --out"
        )
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise ConfigError(
                f"--resume: {out} has no checkpoint to resume from "
                f"(expected {out / CHECKPOINT_DIR}/step-*/{_STATE})"
            )
        return checkpoint
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"output directory {out} is not empty; pass --resume to continue a "
                "paused run, --overwrite to replace it, or choose another --out"
            )
        if not ((out / MANIFEST_FILE).is_file() or (out / CHECKPOINT_DIR).is_dir()):
            raise ConfigError(
                f"refusing to overwrite {out}: it holds no tansaku reranker "
                f"({MANIFEST_FILE}) or training checkpoints; remove it yourself"
            )
        shutil.rmtree(out)
    return None


def train_cross_encoder(
    base: str | os.PathLike[str],
    examples: Sequence[TrainExample] | None,
    out_dir: str | os.PathLike[str],
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a one-logit cross-encoder from ``base`` on ``examples`` and save it in ``out_dir``.

    ``out_dir`` ends up a normal cross-encoder directory (``config.json``, safetensors
    weights, tokenizer) that ``CrossEncoderReranker`` and ``sentence_transformers.CrossEncoder``
    load, with :data:`MANIFEST_FILE` recording base, data, parameters, seed and times.
    ``stop_after`` pauses after that many steps in total, leaving a checkpoint that
    ``resume=True`` (with ``examples=None``: they are stored with the checkpoints)
    continues from. ``provenance`` is added to the manifest (e.g. how negatives were mined).
    """
    say = log or logger.info
    out = Path(out_dir).expanduser().resolve()  # a symlinked --out keeps its link
    checkpoint = _prepare_out(out, resume, overwrite)
    root = out / CHECKPOINT_DIR
    if checkpoint is not None:
        state = json.loads((checkpoint / _STATE).read_text(encoding="utf-8"))
        stored = read_examples(root / EXAMPLES_FILE)
        if examples is not None and examples_digest(examples) != state["examples_sha256"]:
            raise ConfigError(
                "--resume: the training examples differ from the paused run's; resume "
                "without new data (they are stored with the checkpoints)"
            )
        examples = stored
        _check_resume(state, base, config)
        provenance = provenance or state.get("provenance")
    if examples is None:
        raise ConfigError("no training examples given (and nothing to resume)")
    check_examples(examples)
    examples = list(examples)
    digest = examples_digest(examples)
    if stop_after is not None:
        _check_int("stop_after", stop_after, 1)
    if config.threads:
        torch.set_num_threads(config.threads)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        loaded, encoder = initial_model(base, examples, config)
        model = loaded.model
        _freeze(model, config)
        optimizer, named = _optimizer(model, config)
        frozen = _frozen_checksum(model)
        batches = _batches(len(examples), config)
        total = len(batches)
        warmup = round(config.warmup_ratio * total)
        start_step, elapsed, losses = 0, 0.0, []
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if checkpoint is not None:
            if abs(state["frozen_checksum"] - frozen) > 1e-6 * max(1.0, abs(frozen)):
                raise ConfigError(
                    f"--resume: the frozen weights of base {base!r} differ from the "
                    "paused run's; resume with the same --base"
                )
            _load_checkpoint(checkpoint, named, optimizer)
            start_step, elapsed = int(state["step"]), float(state["seconds"])
            losses, started_at = list(state["losses"]), state["started_at"]
            say(f"resuming from {checkpoint} (step {start_step}/{total})")
        else:
            root.mkdir(parents=True, exist_ok=True)
            write_examples(root / EXAMPLES_FILE, examples)
        say(
            f"training {loaded.source}: {len(examples)} groups, {total} steps, "
            f"{sum(p.numel() for p in named.values()):,} trainable weights; " + "; ".join(loaded.notes)
        )

        def snapshot(step: int) -> dict[str, Any]:
            return {
                "step": step,
                "total_steps": total,
                "seconds": elapsed,
                "losses": losses,
                "base": str(base),
                "config": config.to_dict(),
                "examples_sha256": digest,
                "examples": len(examples),
                "frozen_checksum": frozen,
                "started_at": started_at,
                "provenance": provenance,
            }

        end = total if stop_after is None else min(total, stop_after)
        saved: Path | None = None
        model.train()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=start_step,
            desc="train-reranker",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar:
            for step in range(start_step, end):
                t0 = time.perf_counter()
                groups = [examples[i] for i in batches[step]]
                logits = encoder.logits(model, groups, config.micro_batch)
                loss = group_loss(logits, [1 + len(g.negatives) for g in groups], config.loss)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(named.values()), config.max_grad_norm)
                lr = learning_rate(step, total, warmup, config.learning_rate)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(round(float(loss.detach()), 6))
                elapsed += time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{lr:.2e}")
                done = step + 1
                if done < total and (
                    done == end or (config.checkpoint_every and done % config.checkpoint_every == 0)
                ):
                    saved = _save_checkpoint(
                        root, done, named, optimizer, snapshot(done), config.keep_checkpoints
                    )
        steps_done = max(start_step, end)
        if steps_done < total:
            say(f"paused after step {steps_done}/{total}; continue with --resume ({saved})")
            return TrainResult(
                out,
                steps_done,
                total,
                elapsed,
                False,
                float(np.mean(losses)) if losses else None,
                saved,
                losses,
            )

        model.eval()
        model.save_pretrained(str(out))
        loaded.tokenizer.save_pretrained(str(out))
    manifest = {
        "format": "tansaku-reranker/1",
        "trainer": "tansaku.rerank.training",
        "base": str(base),
        "base_resolved": loaded.source,
        "base_notes": loaded.notes,
        "examples": len(examples),
        "examples_sha256": digest,
        "negatives_per_query": _summary([len(e.negatives) for e in examples]),
        "data": provenance or {},
        "params": config.to_dict(),
        "seed": config.seed,
        "steps": total,
        "train_seconds": round(elapsed, 2),
        "loss_first_50": _mean(losses[:50]),
        "loss_last_50": _mean(losses[-50:]),
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }
    write_manifest(out, manifest)
    _write_card(out, manifest)
    if not config.keep_checkpoints:
        shutil.rmtree(root, ignore_errors=True)
    say(f"wrote {out} ({total} steps in {elapsed:.0f} s)")
    return TrainResult(out, total, total, elapsed, True, _mean(losses), None, losses)


def _check_resume(state: dict[str, Any], base: str | os.PathLike[str], config: TrainConfig) -> None:
    if str(base) != state["base"]:
        raise ConfigError(f"--resume: --base {str(base)!r} differs from the paused run's {state['base']!r}")
    for name in _RUN_FIELDS:
        before, now = state["config"].get(name), getattr(config, name)
        if before != now:
            raise ConfigError(
                f"--resume: {name} was {before!r} in the paused run, now {now!r}; "
                "resume with the same settings"
            )


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training manifest of a reranker directory, or None when it has none."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else None


def write_manifest(model_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    write_json(Path(model_dir) / MANIFEST_FILE, manifest)


def recorded_fusion(model_dir: str | os.PathLike[str]) -> tuple[float | None, str | None]:
    """The fusion weight a trained reranker records (chosen on held-out queries) and the first
    stage (search mode) it was chosen with; None for what it does not record."""
    manifest = read_manifest(model_dir) if Path(model_dir).is_dir() else None
    fusion = (manifest or {}).get("fusion")
    fusion = fusion if isinstance(fusion, dict) else {}
    weight, stage = fusion.get("weight"), fusion.get("first_stage")
    return (
        float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool) else None,
        stage if isinstance(stage, str) else None,
    )


def _write_card(out: Path, m: dict[str, Any]) -> None:
    p = m["params"]
    (out / "README.md").write_text(
        f"# Cross-encoder reranker trained by tansaku\n\n"
        f"Base: `{m['base']}`. {m['examples']} (query, positive, hard negatives) groups, "
        f"{p['loss']} loss, {m['steps']} steps, lr {p['learning_rate']}, max_length {p['max_length']}, "
        f"seed {p['seed']}; {m['train_seconds']:.0f} s of training ({m['threads']} threads).\n\n"
        f"Load it with `CrossEncoderReranker(DIR)`, `tansaku search INDEX QUERY --reranker DIR` or "
        f"`sentence_transformers.CrossEncoder(DIR)`. Everything about the run is in `{MANIFEST_FILE}`.\n",
        encoding="utf-8",
    )


def _summary(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "mean": round(float(np.mean(values)), 2), "max": max(values)}


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 6) if len(values) else None

"""The model training starts from: the base as a one-logit classifier, cut, with its dropout set.

The base is any transformers encoder (a sentence-transformers directory such as the one
``tansaku models import e5-small`` writes, a plain ``BertModel``/XLM-R checkpoint, or an
existing cross-encoder), by local path or hub id. It becomes an
``AutoModelForSequenceClassification`` with one logit (for BERT: ``BertForSequenceClassification``
on the pooled ``[CLS]`` output, initialised from the base weights).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tansaku.index.encoders.hub import load_failure, resolve
from tansaku.index.errors import ConfigError, ModelLoadError
from tansaku.rerank.training.config import TrainConfig
from tansaku.rerank.training.encoding import PairEncoder
from tansaku.rerank.training.examples import TrainExample

POOLER_SAMPLE_GROUPS = 32


@dataclass
class LoadedBase:
    """A loaded base model, its tokenizer and notes on what loading it did."""

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


def load_base(base: str | os.PathLike[str], *, seed: int = 0) -> LoadedBase:
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
    return LoadedBase(model, tokenizer, source.name, notes, untrained)


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
    model: Any,
    pooler: torch.nn.Linear,
    encoder: PairEncoder,
    groups: Sequence[TrainExample],
    *,
    progress: bool = False,
) -> None:
    """Set an untrained pooler to standardise the first token's state: (h - mean) / std.

    Why: in e5 (trained with mean pooling) the first token is an attention sink whose state
    barely changes between inputs (its spread is ~0.3 % of its norm in the middle layers),
    yet what does change carries relevance. A random pooler would bury that signal and pass
    almost no gradient back; standardising it gives the classifier unit-scale features from
    the first step. Mean and std come from the pairs of ``groups``, in eval mode (one forward
    pass per pair: a progress bar with ``progress``).
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    units = encoder.units(groups)
    states = [
        model.base_model(**encoder.collate([unit])).last_hidden_state[0, 0]
        for unit in tqdm(units, desc="preparing model", unit="pair", disable=not progress, leave=False)
    ]
    model.train(was_training)
    stacked = torch.stack(states).double()
    mean, std = stacked.mean(0), stacked.std(0)
    std = std.clamp_min(float(std.max()) * 1e-3 + 1e-12)
    pooler.weight.copy_(torch.diag(1 / std).to(pooler.weight.dtype))
    pooler.bias.copy_((-mean / std).to(pooler.bias.dtype))


def initial_model(
    base: str | os.PathLike[str],
    examples: Sequence[TrainExample],
    config: TrainConfig,
    *,
    progress: bool = False,
) -> tuple[LoadedBase, PairEncoder]:
    """The model training starts from (what ``train_cross_encoder`` trains), and its encoder.

    The base loaded as a classifier, cut to ``config.layers``, with ``config.dropout``, and
    an untrained pooler standardised over the first :data:`POOLER_SAMPLE_GROUPS` groups
    (with a progress bar when ``progress``).
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
        standardize_pooler(loaded.model, loaded.untrained_pooler, encoder, sample, progress=progress)
        loaded.notes.append(
            f"untrained pooler set to standardise the first token "
            f"(over {sum(1 + len(e.negatives) for e in sample)} pairs)"
        )
    return loaded, encoder


def freeze(model: Any, config: TrainConfig) -> None:
    """Freeze the word embeddings (unless ``config.train_embeddings``) and the lowest
    ``config.freeze_layers`` encoder layers with the embedding block."""
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

"""The training loop: fine-tune a cross-encoder reranker on (query, positive, hard negatives) groups.

Why it lives here: the loop needs nothing but texts and a base model, so the rerank stage can
train its own models; finding the hard negatives (with a retriever) is the pipeline's job.

Inputs are built exactly as :class:`~tansaku.rerank.CrossEncoderReranker` builds them at search
time (same pair template, same segment ids, the document cut to its first window), so what is
trained is what is served (:mod:`.encoding`); the base becomes a one-logit classifier
(:mod:`.model`).

Losses: ``listwise`` (softmax cross-entropy over 1 positive + n negatives, the positive is the
target) or ``bce`` (binary cross-entropy on every pair). Checkpoints (:mod:`.checkpoints`) make
a resumed run end with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tansaku.index.checks import check_int
from tansaku.index.errors import ConfigError
from tansaku.rerank.training.checkpoints import (
    CHECKPOINT_DIR,
    check_resume,
    frozen_checksum,
    load_checkpoint,
    prepare_out,
    read_state,
    save_checkpoint,
)
from tansaku.rerank.training.config import TrainConfig
from tansaku.rerank.training.diagnostics import loss_warning
from tansaku.rerank.training.examples import (
    EXAMPLES_FILE,
    TrainExample,
    check_examples,
    examples_digest,
    read_examples,
    write_examples,
)
from tansaku.rerank.training.manifest import rounded_mean, training_manifest, write_card, write_manifest
from tansaku.rerank.training.model import freeze, initial_model

# the package's name, as before the split, so logging set up for it keeps catching these lines
logger = logging.getLogger("tansaku.rerank.training")


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
    # "warning: ..." lines about the run (a loss that did not fall); empty when all is well
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "steps": self.steps,
            "total_steps": self.total_steps,
            "seconds": round(self.seconds, 3),
            "completed": self.completed,
            "mean_loss": self.mean_loss,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "warnings": list(self.warnings),
        }


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
    checkpoint = prepare_out(out, resume, overwrite)
    root = out / CHECKPOINT_DIR
    if checkpoint is not None:
        state = read_state(checkpoint)
        stored = read_examples(root / EXAMPLES_FILE)
        if examples is not None and examples_digest(examples) != state["examples_sha256"]:
            raise ConfigError(
                "--resume: the training examples differ from the paused run's; resume "
                "without new data (they are stored with the checkpoints)"
            )
        examples = stored
        check_resume(state, base, config)
        provenance = provenance or state.get("provenance")
    if examples is None:
        raise ConfigError("no training examples given (and nothing to resume)")
    check_examples(examples)
    examples = list(examples)
    digest = examples_digest(examples)
    if stop_after is not None:
        check_int("stop_after", stop_after, 1)
    if config.threads:
        torch.set_num_threads(config.threads)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # said before loading: a large base takes a while to load and prepare
        say(f"loading base model {base}")
        prepare_start = time.perf_counter()
        loaded, encoder = initial_model(base, examples, config, progress=progress)
        model = loaded.model
        freeze(model, config)
        optimizer, named = _optimizer(model, config)
        frozen = frozen_checksum(model)
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
            load_checkpoint(checkpoint, named, optimizer)
            start_step, elapsed = int(state["step"]), float(state["seconds"])
            losses, started_at = list(state["losses"]), state["started_at"]
            say(f"resuming from {checkpoint} (step {start_step}/{total})")
        else:
            root.mkdir(parents=True, exist_ok=True)
            write_examples(root / EXAMPLES_FILE, examples)
        say(
            f"training {loaded.source} (loaded and prepared in {time.perf_counter() - prepare_start:.1f} s): "
            f"{len(examples)} groups, {total} steps, "
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
                    saved = save_checkpoint(
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
    warnings = tuple(w for w in [loss_warning(losses)] if w)
    for warning in warnings:
        (log or logger.warning)(warning)
    manifest = training_manifest(
        base=base,
        base_resolved=loaded.source,
        base_notes=loaded.notes,
        examples=examples,
        examples_sha256=digest,
        provenance=provenance,
        config=config,
        steps=total,
        seconds=elapsed,
        losses=losses,
        started_at=started_at,
    )
    manifest["warnings"] = list(warnings)
    write_manifest(out, manifest)
    write_card(out, manifest)
    if not config.keep_checkpoints:
        shutil.rmtree(root, ignore_errors=True)
    say(f"wrote {out} ({total} steps in {elapsed:.0f} s)")
    return TrainResult(out, total, total, elapsed, True, rounded_mean(losses), None, losses, warnings)

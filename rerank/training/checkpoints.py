"""Training checkpoints: save, load, find the latest, and check that a resume matches its run.

A checkpoint holds the trainable weights, AdamW's state and the RNG state as safetensors plus
a JSON file (nothing is pickled), so a run resumed from any checkpoint ends with the same
weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tansaku.index.atomic import write_json
from tansaku.index.errors import ConfigError
from tansaku.rerank.training.config import RUN_FIELDS, TrainConfig
from tansaku.rerank.training.manifest import MANIFEST_FILE

CHECKPOINT_DIR = "checkpoints"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints``, or None."""
    root = Path(out_dir) / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(
    root: Path,
    step: int,
    named: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.AdamW,
    state: dict[str, Any],
    keep: bool,
) -> Path:
    """Write ``root/step-NNNNNNN`` atomically; unless ``keep``, remove the older ones."""
    from safetensors.torch import save_file

    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().contiguous().clone() for n, p in named.items()}
    weights["__rng__.torch"] = torch.get_rng_state().clone()
    save_file(weights, str(tmp / WEIGHTS_FILE))
    moments: dict[str, torch.Tensor] = {}
    for n, p in named.items():
        s = optimizer.state.get(p)
        if s:
            moments[f"{n}.exp_avg"] = s["exp_avg"].contiguous()
            moments[f"{n}.exp_avg_sq"] = s["exp_avg_sq"].contiguous()
            moments[f"{n}.step"] = torch.as_tensor(s["step"], dtype=torch.float32).reshape(1)
    save_file(moments, str(tmp / OPTIMIZER_FILE))
    write_json(tmp / STATE_FILE, state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if not keep:
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, named: dict[str, torch.nn.Parameter], optimizer: torch.optim.AdamW) -> None:
    """Restore the trainable weights, AdamW's state and the RNG state saved in ``path``."""
    from safetensors.torch import load_file

    weights = load_file(str(path / WEIGHTS_FILE))
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
    moments = load_file(str(path / OPTIMIZER_FILE))
    for n, p in named.items():
        if f"{n}.exp_avg" in moments:
            optimizer.state[p] = {
                "step": moments[f"{n}.step"].reshape(()).clone(),
                "exp_avg": moments[f"{n}.exp_avg"].clone(),
                "exp_avg_sq": moments[f"{n}.exp_avg_sq"].clone(),
            }


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The run state (step, losses, config, ...) stored with ``checkpoint``."""
    return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))


def prepare_out(out: Path, resume: bool, overwrite: bool) -> Path | None:
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
                f"(expected {out / CHECKPOINT_DIR}/step-*/{STATE_FILE})"
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


def check_resume(state: dict[str, Any], base: str | os.PathLike[str], config: TrainConfig) -> None:
    """Reject a resume whose base or arithmetic settings differ from the paused run's."""
    if str(base) != state["base"]:
        raise ConfigError(f"--resume: --base {str(base)!r} differs from the paused run's {state['base']!r}")
    for name in RUN_FIELDS:
        before, now = state["config"].get(name), getattr(config, name)
        if before != now:
            raise ConfigError(
                f"--resume: {name} was {before!r} in the paused run, now {now!r}; "
                "resume with the same settings"
            )


def frozen_checksum(model: Any) -> float:
    """A sum over the frozen weights, stored with checkpoints."""
    # resuming rebuilds frozen weights from the base: a different base must not slip through
    with torch.no_grad():
        return float(sum(p.double().sum().item() for p in model.parameters() if not p.requires_grad))

"""The manifest a trained reranker directory carries (:data:`MANIFEST_FILE`) and its model card.

Training writes base, data, parameters, seed and times; ``tansaku train-reranker`` later adds
the fusion weight chosen on held-out queries, which :func:`recorded_fusion` reads at search time.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tansaku.index.atomic import write_json
from tansaku.index.errors import ConfigError
from tansaku.rerank.training.config import TrainConfig
from tansaku.rerank.training.examples import TrainExample

MANIFEST_FILE = "tansaku_reranker.json"
FORMAT = "tansaku-reranker/1"
# the module that trained the model, as manifests have always named it
TRAINER = "tansaku.rerank.training"


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
    """Write ``manifest`` into ``model_dir``, atomically."""
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


def training_manifest(
    *,
    base: str | os.PathLike[str],
    base_resolved: str,
    base_notes: list[str],
    examples: Sequence[TrainExample],
    examples_sha256: str,
    provenance: dict[str, Any] | None,
    config: TrainConfig,
    steps: int,
    seconds: float,
    losses: Sequence[float],
    started_at: str,
) -> dict[str, Any]:
    """What a finished run records about itself (finished now, on this machine)."""
    import torch

    return {
        "format": FORMAT,
        "trainer": TRAINER,
        "base": str(base),
        "base_resolved": base_resolved,
        "base_notes": base_notes,
        "examples": len(examples),
        "examples_sha256": examples_sha256,
        "negatives_per_query": _summary([len(e.negatives) for e in examples]),
        "data": provenance or {},
        "params": config.to_dict(),
        "seed": config.seed,
        "steps": steps,
        "train_seconds": round(seconds, 2),
        "loss_first_50": rounded_mean(losses[:50]),
        "loss_last_50": rounded_mean(losses[-50:]),
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }


def write_card(out: Path, m: dict[str, Any]) -> None:
    """A README.md for the model directory, from manifest ``m``."""
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


def rounded_mean(values: Sequence[float]) -> float | None:
    """The mean to 6 decimals, or None for no values."""
    return round(float(np.mean(values)), 6) if len(values) else None


def _summary(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "mean": round(float(np.mean(values)), 2), "max": max(values)}

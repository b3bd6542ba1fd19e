"""Training groups (:class:`TrainExample`): validation, a content digest and JSONL storage."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tansaku.index.errors import ConfigError

EXAMPLES_FILE = "examples.jsonl"


@dataclass(frozen=True)
class TrainExample:
    """One training group: a query, a relevant text and non-relevant (hard negative) texts."""

    query: str
    positive: str
    negatives: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "positive": self.positive, "negatives": list(self.negatives)}


def examples_digest(examples: Sequence[TrainExample]) -> str:
    """SHA-256 over the groups in order (a resumed run must train on the same data)."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(ex.to_dict(), ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def check_examples(examples: Sequence[TrainExample]) -> None:
    """Reject an empty list and groups without a query, a positive or negatives."""
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
    """Write ``examples`` as JSONL, atomically."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_examples(path: Path) -> list[TrainExample]:
    """The groups :func:`write_examples` wrote."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            out.append(TrainExample(d["query"], d["positive"], tuple(d["negatives"])))
    return out

"""Small helpers shared by tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tansaku.index import SAMPLE_CORPUS

# A query and documents the rerank and server tests score (the first answers the query).
RERANK_QUERY = "東京の人口"
RERANK_DOCS = (
    "東京は日本の首都であり、人口はおよそ千四百万人です。",
    "富士山は日本で一番高い山です。",
    "猫はネズミを捕まえるのが得意です。",
    "Tokyo is the capital of Japan and one of the largest cities in the world.",
    "新幹線は東京と大阪を約二時間半で結ぶ高速鉄道です。",
)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def sample_rows() -> list[dict[str, Any]]:
    with open(SAMPLE_CORPUS, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def tree_snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes under ``directory`` (to prove an index was left untouched)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


class HashEncoder:
    """A deterministic test encoder: the words of a text (with ``characters``, also each of its
    characters) hashed into ``dim`` signed buckets, L2-normalised; ``spread`` adds each unit
    half a count in a second bucket."""

    name = "hash-test"

    def __init__(self, dim: int = 16, *, characters: bool = False, spread: bool = False) -> None:
        self.dim = dim
        self.characters = characters
        self.spread = spread

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for unit in (*text.split(), *text) if self.characters else text.split():
                digest = hashlib.blake2b(unit.encode(), digest_size=4).digest()
                out[row, digest[0] % self.dim] += 1.0 if digest[1] & 1 else -1.0
                if self.spread:
                    out[row, digest[2] % self.dim] += 0.5
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-6)
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def to_config(self) -> dict[str, Any]:
        return {"type": "hash-test", "dim": self.dim}

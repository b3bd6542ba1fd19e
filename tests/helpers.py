"""Small helpers shared by tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tansaku.index import SAMPLE_CORPUS


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

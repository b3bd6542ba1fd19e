"""Small helpers shared by the benchmark scripts: timing, peak RSS, sizes and text tables."""

from __future__ import annotations

import math
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def best_time(
    fn: Callable[[], T], repeat: int, warmup: Callable[[], object] | None = None
) -> tuple[float, T]:
    """Run ``warmup`` once (untimed), then ``fn`` ``repeat`` times; best seconds and last result.

    The previous result is dropped before each run, so two results (e.g. two built
    indexes) are never alive at once and do not inflate the peak RSS.
    """
    if warmup is not None:
        warmup()
    best = math.inf
    result: Any = None
    for _ in range(max(1, repeat)):
        result = None
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    On Linux this is ``VmHWM`` from /proc/self/status: ``ru_maxrss`` of a child process
    starts at its parent's high-water mark (the kernel carries it across fork + exec), so it
    would report a big parent's memory for a small worker. Elsewhere ``ru_maxrss`` (KiB on
    Linux, bytes on macOS) is the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        match = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def dir_size_mb(path: str | os.PathLike[str]) -> float:
    """Total size in MiB of the regular files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A number for a table cell: ``n/a`` for None, thousands separators for large values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])

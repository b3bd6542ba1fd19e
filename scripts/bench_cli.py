#!/usr/bin/env python3
"""Start-up time of the ``tansaku`` command against a bare ``python -c pass`` (run with --help)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _bench_common import fmt_num, format_table

DESCRIPTION = """\
Time whole processes, as a shell runs them (hyperfine-like): `python -c pass` (the floor),
`tansaku --help`, `tansaku search --help` and a BM25 `tansaku search` on the sample index
(`tansaku build --sample --encoder none`, built in a temporary directory unless --index is
given). Each command runs once untimed (warm file cache), then --runs times; the table gives
the median, min and max seconds and the median's ratio to `python -c pass`, plus the number
of modules each one imports (`-X importtime`, counted once). --quick: 3 runs each.
"""

QUERY = "富士山の高さ"


def tansaku_command() -> list[str]:
    """The installed ``tansaku`` script of this Python, else ``python -m tansaku.pipeline.cli``."""
    script = Path(sys.executable).parent / "tansaku"
    if script.exists():
        return [str(script)]
    found = shutil.which("tansaku")
    return [found] if found else [sys.executable, "-m", "tansaku.pipeline.cli"]


def run_once(argv: Sequence[str], env: dict[str, str]) -> float:
    """Seconds one run of ``argv`` takes (it must exit 0)."""
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - start


def count_imports(argv: Sequence[str], env: dict[str, str]) -> int:
    """How many modules ``argv`` imports, the interpreter's own included (``-X importtime`` lines)."""
    if Path(argv[0]).name == Path(sys.executable).name:
        command = [argv[0], "-X", "importtime", *argv[1:]]
    else:  # a console script: run it through this Python
        command = [sys.executable, "-X", "importtime", *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return sum(1 for line in done.stderr.splitlines() if line.startswith("import time:"))


def build_sample(directory: Path, env: dict[str, str]) -> Path:
    """A BM25-only index of the sample corpus in ``directory``."""
    path = directory / "sample"
    subprocess.run(
        [*tansaku_command(), "build", str(path), "--sample", "--encoder", "none", "-q"], check=True, env=env
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (default: 10)")
    parser.add_argument("--quick", action="store_true", help="3 runs per command")
    parser.add_argument("--index", type=Path, help="index to search (default: the sample, built here)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 3

    env = dict(os.environ)
    tansaku = tansaku_command()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        index = args.index or build_sample(Path(tmp), env)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "tansaku --help": [*tansaku, "--help"],
            "tansaku search --help": [*tansaku, "search", "--help"],
            "tansaku search (bm25)": [*tansaku, "search", str(index), QUERY, "--mode", "bm25", "-k", "3"],
        }
        times: dict[str, list[float]] = {}
        modules: dict[str, int] = {}
        for name, command in commands.items():
            run_once(command, env)  # warm-up: file cache, .pyc files, numba's cache
            times[name] = [run_once(command, env) for _ in range(max(1, args.runs))]
            modules[name] = count_imports(command, env)

    floor = statistics.median(times["python -c pass"])
    results = {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "ratio": statistics.median(ts) / floor,
            "modules": modules[name],
        }
        for name, ts in times.items()
    }
    if args.json:
        print(json.dumps({"runs": args.runs, "results": results}, indent=2))
        return 0
    rows = [
        [
            name,
            fmt_num(r["median_s"]),
            fmt_num(r["min_s"]),
            fmt_num(r["max_s"]),
            f"{r['ratio']:.1f}x",
            str(r["modules"]),
        ]
        for name, r in results.items()
    ]
    print(f"{args.runs} runs each (after one untimed run); seconds")
    print(format_table(["command", "median", "min", "max", "vs python", "modules"], rows))
    help_, search = results["tansaku --help"], results["tansaku search (bm25)"]
    print(
        f"verdict: `tansaku --help` takes {help_['ratio']:.1f}x the start-up of `python -c pass` "
        f"({help_['median_s']:.3f} s vs {floor:.3f} s); a BM25 search process "
        f"{search['median_s']:.2f} s ({search['modules']} modules)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

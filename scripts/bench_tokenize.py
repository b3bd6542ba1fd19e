#!/usr/bin/env python3
"""Tokenisation throughput: one process vs worker processes (tansaku's tokenize_all).

Corpus: the synthetic Japanese corpus shared by the benchmarks (scripts/_synthetic.py:
JSQuAD valid sentences re-drawn into documents of 3-6 sentences, ~250 characters,
seeded), streamed, so any size fits in memory. Default 1,000,000 documents; --quick
20,000. Each worker count runs on the same documents; the script checks that every
run produced exactly the same tokens in the same order (a digest of the whole token
stream) and prints docs/s, the speed-up over one process and the load average
(the CPU may be shared: compare runs taken at similar load). It also prints the CPU
seconds each run used (this process + its worker processes, read from /proc) and the
"CPU-bound speed-up" that work allows on min(cores, workers) free cores: single-process
CPU seconds / (parallel CPU seconds / cores). On a machine shared with other jobs the wall
speed-up depends on their load; the CPU-bound figure does not. Last, it measures what two
processes can gain on this machine at all: the same job twice, one after the other in one
process vs at once in two (an interpreter-bound loop, and MeCab alone through fugashi,
without tansaku: the ceiling for the worker speed-up).

Examples:
  python scripts/bench_tokenize.py --quick
  python scripts/bench_tokenize.py --docs 200000 --workers 1,2 --analyzer ja
  python scripts/bench_tokenize.py --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from _bench_common import format_table
from _synthetic import jsquad_paragraphs, synthetic_records

from tansaku.index.analyzer import get_analyzer
from tansaku.index.tokenize_workers import cpu_count, tokenize_all

REPO = Path(__file__).resolve().parent.parent


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (pool workers are children of the forkserver, our child)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        out.extend(kids)
        frontier.extend(kids)
    return out


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


class ChildCpu:
    """Samples the CPU time of this process's descendants (the tokenising workers) each second.

    A worker's last second before the pool ends it can be missed: a slight undercount.
    """

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            for pid in _descendants(os.getpid()):
                cpu = _cpu_seconds(pid)
                if cpu is not None:
                    self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))

    def __enter__(self) -> ChildCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- what two processes can gain on this machine at all -------------------------------------

_TAGGER = None


def _start_tagger() -> None:
    global _TAGGER
    import fugashi

    _TAGGER = fugashi.Tagger()
    _TAGGER("準備")


def _job_python(n: int) -> float:
    """Interpreter-bound: a pure Python loop (its data lives in L1)."""
    start = time.perf_counter()
    total = 0
    for i in range(n * 1_000_000):
        total += i * i % 7
    return time.perf_counter() - start


def _job_mecab(args: tuple[list[str], int]) -> float:
    """MeCab alone (fugashi, no tansaku): the tokeniser's own scaling."""
    texts, n = args
    assert _TAGGER is not None
    start = time.perf_counter()
    for _ in range(n):
        for text in texts:
            for word in _TAGGER(text):
                word.feature.lemma  # noqa: B018 (read like the ja analyzer reads it)
    return time.perf_counter() - start


def machine_ceiling(paragraphs: list[str]) -> list[dict[str, object]]:
    """Speed-up of two copies of a job run at once over the same two run one after the other.

    An interpreter-bound loop reaches ~2x on two free cores; MeCab alone (its dictionary
    lookups touch far more memory) is the ceiling for tansaku's tokenising workers.
    """
    from multiprocessing import get_context

    jobs = [("Python loop", _job_python, 12), ("MeCab (fugashi) alone", _job_mecab, (paragraphs[:300], 6))]
    out = []
    with get_context("fork").Pool(2, initializer=_start_tagger) as pool:
        _start_tagger()
        for name, job, n in jobs:
            job(n)  # warm up here, and in both workers:
            pool.map(job, [n, n], chunksize=1)
            alone = job(n) + job(n)
            # each job times itself (its setup and the pool's messages excluded); at once, the
            # pair is done when the slower of the two is
            together = max(pool.map(job, [n, n], chunksize=1))
            out.append(
                {
                    "job": name,
                    "one_after_other_s": round(alone, 2),
                    "at_once_s": round(together, 2),
                    "speedup": round(alone / together, 2),
                }
            )
    return out


def run(
    analyzer_name: str,
    paragraphs: list[str],
    n_docs: int,
    workers: int,
    chunk_size: int | None,
    progress: bool,
) -> dict[str, object]:
    """Tokenise the corpus once; returns time, counts and a digest of the token stream."""
    from tansaku.index import tokenize_workers

    analyzer = get_analyzer(analyzer_name)
    if chunk_size:
        tokenize_workers.CHUNK = chunk_size
    texts = (r["text"] for r in synthetic_records(paragraphs, n_docs))
    digest = hashlib.blake2b(digest_size=16)
    tokens = 0
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    cpu0 = time.process_time()
    with ChildCpu() as children:
        for toks in tokenize_all(analyzer, texts, total=n_docs, progress=progress, workers=workers):
            tokens += len(toks)
            digest.update("\x1f".join(toks).encode())
            digest.update(b"\x1e")
        seconds = time.perf_counter() - start
        own_cpu = time.process_time() - cpu0
    # The forkserver itself idles; the busy descendants are the workers.
    worker_cpu = sum(c for c in children.seen.values() if c > 0.5)
    return {
        "workers": workers,
        "docs": n_docs,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "docs_per_s": round(n_docs / seconds, 1),
        "digest": digest.hexdigest(),
        "parent_cpu_s": round(own_cpu, 1),
        "worker_cpu_s": round(worker_cpu, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jsquad", type=Path, default=REPO.parent / "shared/data/jsquad/valid-v1.3.json")
    p.add_argument("--docs", type=int, default=1_000_000, help="synthetic documents (default: 1,000,000)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default: 1,2)")
    p.add_argument("--analyzer", default="ja", help="analyzer preset or JSON options (default: ja)")
    p.add_argument("--chunk-size", type=int, help="texts per worker task (default: tansaku's)")
    p.add_argument("--quick", action="store_true", help="20,000 documents")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--no-machine-check",
        action="store_true",
        help="skip the ~20 s check of what two processes can gain on this machine "
        "(a Python loop, and MeCab alone)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)
    if not args.jsquad.exists():
        p.error(f"JSQuAD file not found: {args.jsquad}")
    n_docs = 20_000 if args.quick else args.docs
    paragraphs = jsquad_paragraphs(args.jsquad)
    print(
        f"{n_docs:,} synthetic documents, analyzer {args.analyzer}, {cpu_count()} CPUs, "
        f"load {os.getloadavg()}",
        file=sys.stderr,
    )
    rows = [
        run(args.analyzer, paragraphs, n_docs, int(w), args.chunk_size, not args.no_progress)
        for w in args.workers.split(",")
    ]
    base, base_cpu = float(rows[0]["seconds"]), float(rows[0]["parent_cpu_s"])  # type: ignore[arg-type]
    for row in rows:
        row["speedup"] = round(base / float(row["seconds"]), 2)  # type: ignore[arg-type]
        total = float(row["parent_cpu_s"]) + float(row["worker_cpu_s"])  # type: ignore[arg-type]
        # With n free cores the work spreads over min(n, processes): the speed-up the CPU
        # time allows, whatever else was running during the measurement.
        cores = min(cpu_count(), int(row["workers"]))  # type: ignore[call-overload]
        row["cpu_bound_speedup"] = round(base_cpu / (total / cores), 2) if total else None
    same = len({r["digest"] for r in rows}) == 1
    print(
        format_table(
            [
                "workers",
                "docs",
                "tokens",
                "seconds",
                "docs/s",
                "speed-up",
                "CPU s (parent+workers)",
                "CPU-bound speed-up",
                "load 1-min (before/after)",
            ],
            [
                [
                    str(r["workers"]),
                    f"{r['docs']:,}",
                    f"{r['tokens']:,}",
                    f"{r['seconds']}",
                    f"{r['docs_per_s']:,}",
                    f"{r['speedup']}x",
                    f"{r['parent_cpu_s']}+{r['worker_cpu_s']}",
                    f"{r['cpu_bound_speedup']}x",
                    f"{r['load_before']} / {r['load_after']}",
                ]
                for r in rows
            ],
        )
    )
    print(f"identical token streams across worker counts: {same}")
    ceiling = [] if args.no_machine_check else machine_ceiling(paragraphs)
    if ceiling:
        print(
            "what two processes gain on this machine (the same job twice, one after the other "
            "vs at once in 2 processes):"
        )
        print(
            format_table(
                ["job", "one after the other s", "at once s", "speed-up"],
                [
                    [str(c["job"]), f"{c['one_after_other_s']}", f"{c['at_once_s']}", f"{c['speedup']}x"]
                    for c in ceiling
                ],
            )
        )
    if args.json:
        print(json.dumps({"rows": rows, "machine": ceiling}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

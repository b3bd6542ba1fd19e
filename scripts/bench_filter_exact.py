#!/usr/bin/env python3
"""Where should a filtered dense search switch from exact scoring to a FAISS id selector?

A filtered ``DenseIndex.search`` (``allowed`` mask) either scores every allowed vector exactly
(gathered from the Flat index or the memory-mapped vectors.npy of an IVFPQ index: perfect
recall, cost ∝ allowed documents) or searches FAISS with an ``IDSelectorBitmap`` (IVF probing
nprobe / selectivity lists; cost roughly constant). This script times both, one query at a
time (as the retrievers call it), for allowed sets of increasing size, on a Flat and an IVFPQ
index of the same vectors, and prints the crossover: the largest allowed size at which exact
scoring is still at least as fast. ``tansaku.index.dense.EXACT_MAX_ALLOWED`` records it.

Vectors: the Gaussian mixture of scripts/bench_faiss.py (N x D, unit length); queries are
held-out draws. The allowed documents are a uniform random subset (as a ``bucket`` filter).
Recall@k of the selector path is measured against the exact filtered top-k.

Sizes: default N = 200,000 x 384 (IVFPQ nlist ~ 4 sqrt(N) trained by tansaku's planner:
2-7 minutes on 2 busy cores; ~1 GB RAM); --quick: N = 50,000 (about 2 minutes).

Examples:
  python scripts/bench_filter_exact.py --quick
  python scripts/bench_filter_exact.py -n 200000 --queries 100
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from _bench_common import format_table
from bench_faiss import mixture

from tansaku.index.dense import EXACT_MAX_ALLOWED, DenseIndex, FaissParams


def per_query_ms(
    index: DenseIndex, queries: np.ndarray, k: int, allowed: np.ndarray, exact_max: int
) -> tuple[float, np.ndarray]:
    """Median milliseconds per single-query search, and every query's positions."""
    index.search(queries[:1], k, allowed=allowed, exact_max=exact_max)  # warm caches
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, pos = index.search(q[None, :], k, allowed=allowed, exact_max=exact_max)
        times.append(time.perf_counter() - start)
        found.append(pos[0])
    return float(np.median(times) * 1000), np.asarray(found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=200_000, help="vectors (default 200,000)")
    p.add_argument("--dim", type=int, default=384, help="dimension (default 384, e5-small's)")
    p.add_argument("--clusters", type=int, default=1000, help="mixture components")
    p.add_argument("--spread", type=float, default=0.6, help="noise scale around each centre")
    p.add_argument("--queries", type=int, default=50, help="single-query searches per cell")
    p.add_argument("-k", type=int, default=100)
    p.add_argument(
        "--sizes",
        default="100,300,1000,3000,10000,30000,100000",
        help="allowed-set sizes to time (capped at N)",
    )
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="N = 50,000, 30 queries")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries = 50_000, 30
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    data = mixture(args.n + args.queries, args.dim, args.clusters, args.spread, seed=0)
    vectors, queries = data[: args.n], data[args.n :]
    t0 = time.perf_counter()
    built = DenseIndex.build(vectors, FaissParams(kind="ivfpq"))
    print(f"IVFPQ: {built.reason} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bench-filter-exact-"))
    try:
        built.save(tmp)
        del built
        indexes = {
            "flat": DenseIndex.build(vectors, FaissParams(kind="flat")),
            "ivfpq": DenseIndex.load(tmp, FaissParams(kind="ivfpq"), mmap=True),
        }
        return report(args, indexes, queries)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args: argparse.Namespace, indexes: dict[str, DenseIndex], queries: np.ndarray) -> int:
    rng = np.random.default_rng(1)
    sizes = sorted({min(int(s), args.n) for s in args.sizes.split(",")})
    rows, crossover = [], {}
    for size in sizes:
        allowed = np.zeros(args.n, dtype=np.bool_)
        allowed[rng.choice(args.n, size, replace=False)] = True
        for kind, index in indexes.items():
            exact_ms, truth = per_query_ms(index, queries, args.k, allowed, exact_max=args.n)
            sel_ms, found = per_query_ms(index, queries, args.k, allowed, exact_max=0)
            recall = float(
                np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)])
            )
            if exact_ms <= sel_ms:
                crossover[kind] = size
            rows.append(
                [
                    kind,
                    f"{size:,}",
                    f"{size / args.n:.4%}",
                    f"{exact_ms:.2f}",
                    f"{sel_ms:.2f}",
                    f"{recall:.4f}",
                    "exact" if exact_ms <= sel_ms else "selector",
                ]
            )
    print(
        format_table(
            ["index", "allowed", "selectivity", "exact ms", "selector ms", "selector R@k", "faster"], rows
        )
    )
    print(
        f"N={args.n:,} x {args.dim}, k={args.k}, median of {len(queries)} single-query searches; "
        f"EXACT_MAX_ALLOWED now {EXACT_MAX_ALLOWED:,}"
    )
    for kind in indexes:
        print(
            f"crossover {kind}: exact scoring is at least as fast up to "
            f"{crossover.get(kind, 0):,} allowed documents (of the sizes tried)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

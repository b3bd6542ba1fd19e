#!/usr/bin/env python3
"""Cost of each analyzer preset: build time, index size and query speed (BM25 only).

For each analyzer (default: ja-surface, ja) it builds a BM25-only tansaku index over
  * JSQuAD valid: 1,145 paragraphs, queried with its 4,442 questions, and
  * the synthetic corpus of scripts/_synthetic.py (JSQuAD sentences re-drawn into
    documents of 3-6 sentences, seeded): --docs documents (default 100,000; --quick 10,000),
    queried with the same questions,
and reports the build time (tokenise + BM25), the index size on disk (whole directory
and bm25/), postings and vocabulary, and query speed: single queries through
BM25Retriever.retrieve (analysis + top-100; mean and p50/p99 over --queries questions)
and BM25Retriever.retrieve_batch throughput. Builds use --workers tokenising processes
(default 1, so build times compare the analyzers, not the machine's free cores).

Examples:
  python scripts/bench_analyzers.py --quick
  python scripts/bench_analyzers.py --docs 100000 --analyzers ja-surface,ja --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from _bench_common import dir_size_mb, format_table
from _synthetic import jsquad_paragraphs, synthetic_records

from tansaku.index import BuildConfig, build_index, read_dicts
from tansaku.pipeline.eval.datasets import load_jsquad
from tansaku.retrieve import BM25Retriever

REPO = Path(__file__).resolve().parent.parent


def bench(
    name: str,
    corpus: str,
    records,
    n_docs: int,
    questions: list[str],
    workdir: Path,
    workers: int,
    n_queries: int,
) -> dict[str, object]:
    path = workdir / f"{corpus}-{name}"
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    index = build_index(
        path, records, BuildConfig(analyzer=name, workers=workers), progress=False, total=n_docs
    )
    build_s = time.perf_counter() - start
    retriever = BM25Retriever(index)
    queries = questions[:n_queries]
    for q in queries[:20]:  # warm: numba kernel, MeCab, page cache
        retriever.retrieve(q, 100)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        retriever.retrieve(q, 100)
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    retriever.retrieve_batch(queries, 100)
    batch_s = time.perf_counter() - t0
    times.sort()
    row = {
        "analyzer": name,
        "corpus": corpus,
        "docs": len(index),
        "build_s": round(build_s, 2),
        "tokenize_bm25_s": round(index.manifest.build.seconds["tokenize+bm25"], 2),
        "size_mb": round(dir_size_mb(path), 1),
        "bm25_mb": round(dir_size_mb(path / "bm25"), 1),
        "postings": index.bm25.n_postings,
        "terms": len(index.bm25.vocab),
        "query_mean_ms": round(statistics.fmean(times), 3),
        "query_p50_ms": round(times[len(times) // 2], 3),
        "query_p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
        "batch_qps": round(len(queries) / batch_s, 1),
        "load": round(os.getloadavg()[0], 2),
    }
    index.close()
    print(f"  {corpus} {name}: built in {build_s:.1f} s, query {row['query_mean_ms']} ms", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jsquad", type=Path, default=REPO.parent / "shared/data/jsquad/valid-v1.3.json")
    p.add_argument("--analyzers", default="ja-surface,ja", help="presets or JSON options, comma-separated")
    p.add_argument("--docs", type=int, default=100_000, help="synthetic documents (default: 100,000)")
    p.add_argument("--queries", type=int, default=2000, help="questions timed one by one (default: 2,000)")
    p.add_argument("--workers", type=int, default=1, help="tokenising processes per build (default: 1)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tansaku-bench-analyzers"))
    p.add_argument("--quick", action="store_true", help="10,000 synthetic documents, 500 queries")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)
    if not args.jsquad.exists():
        p.error(f"JSQuAD file not found: {args.jsquad}")
    n_docs, n_queries = (10_000, 500) if args.quick else (args.docs, args.queries)
    ds = load_jsquad(args.jsquad)
    questions = list(ds.queries.values())
    paragraphs = jsquad_paragraphs(args.jsquad)
    analyzers = [a.strip() for a in args.analyzers.split(",") if a.strip()]
    rows = []
    for name in analyzers:
        rows.append(
            bench(
                name,
                "jsquad",
                read_dicts(ds.corpus),
                len(ds.corpus),
                questions,
                args.workdir,
                args.workers,
                n_queries,
            )
        )
    for name in analyzers:
        records = read_dicts(synthetic_records(paragraphs, n_docs))
        rows.append(
            bench(
                name,
                f"synthetic-{n_docs // 1000}k",
                records,
                n_docs,
                questions,
                args.workdir,
                args.workers,
                n_queries,
            )
        )
    keys = [
        "corpus",
        "analyzer",
        "docs",
        "build_s",
        "size_mb",
        "bm25_mb",
        "postings",
        "terms",
        "query_mean_ms",
        "query_p50_ms",
        "query_p99_ms",
        "batch_qps",
        "load",
    ]
    print(
        format_table(
            keys, [[f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys] for r in rows]
        )
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

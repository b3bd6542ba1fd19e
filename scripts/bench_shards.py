"""Sharded vs unsharded index: build peak memory, build time, query speed, and equality.

Builds the same synthetic Japanese corpus (JSQuAD sentences recombined, see
scripts/_synthetic.py) BM25 only, as one index and with each ``--shards`` count, each build
in its own process so its peak resident memory (VmHWM) is its own. Then searches all of them
with the same queries (BM25 top-100, single queries and one batch) and checks that every
result list equals the one index's: same ids, same order, same scores.

Goals (the sharded-index issue): with 8 shards, a million documents with the ``ja`` analyzer
build in <= 3 GB peak and <= 1.2x the one-index build time, and answer at >= 0.8x its q/s.

  python scripts/bench_shards.py --docs 1000000 --shards 4,8
  python scripts/bench_shards.py --quick      # 20,000 documents, 4 shards (~1 min)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import dir_size_mb, format_table, peak_rss_mb  # noqa: E402
from _synthetic import jsquad_paragraphs, sentences_of, synthetic_records  # noqa: E402

JSQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsquad" / "valid-v1.3.json"


def worker_build(args: argparse.Namespace) -> int:
    """In a child process: build one index and print its time and peak memory as JSON."""
    from tansaku.index import BuildConfig, build_index, read_file

    config = BuildConfig(analyzer=args.analyzer, encoder="none", shards=int(args.shards) or None)
    start = time.perf_counter()
    build_index(args.path, read_file(args.input), config, progress=False).close()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb()}))
    return 0


def build(path: Path, input_file: Path, analyzer: str, shards: int) -> dict[str, float]:
    print(f"building {'one index' if not shards else f'{shards} shards'} ...", file=sys.stderr, flush=True)
    command = [sys.executable, __file__, "--worker", "--path", str(path), "--input", str(input_file),
               "--analyzer", analyzer, "--shards", str(shards)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), mb_on_disk=dir_size_mb(path))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=200_000, help="synthetic documents (default 200,000)")
    p.add_argument("--shards", default="4", help="comma-separated shard counts to build (default 4)")
    p.add_argument("--queries", type=int, default=500, help="queries searched on both (default 500)")
    p.add_argument("--analyzer", default="ja", help="analyzer of every build (default ja)")
    p.add_argument("--quick", action="store_true", help="20,000 documents, 200 queries")
    p.add_argument("--jsquad", type=Path, default=JSQUAD, help="JSQuAD valid file (the sentences)")
    p.add_argument(
        "--sharded-only",
        action="store_true",
        help="build only the sharded index (a corpus one index's build cannot hold): time, peak, size",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_build(args)
    if args.quick:
        args.docs, args.queries = 20_000, 200
    if not args.jsquad.exists():
        raise SystemExit(f"JSQuAD not found at {args.jsquad} (pass --jsquad FILE)")

    from tansaku.index import open_index
    from tansaku.retrieve import BM25Retriever

    paragraphs = jsquad_paragraphs(args.jsquad)
    with tempfile.TemporaryDirectory(prefix="tansaku-shards-") as tmp:
        corpus = Path(tmp) / "docs.jsonl"
        with open(corpus, "w", encoding="utf-8") as fh:
            for record in synthetic_records(paragraphs, args.docs):
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"{args.docs:,} synthetic documents, analyzer {args.analyzer}", file=sys.stderr)
        counts = [0] + [int(c) for c in args.shards.split(",")]
        if args.sharded_only:
            for c in counts[1:]:
                b = build(Path(tmp) / f"s{c}", corpus, args.analyzer, c)
                size = f"peak {b['peak_mb']:,.0f} MiB, {b['mb_on_disk']:,.0f} MiB on disk"
                print(f"{args.docs:,} documents, {c} shards: {b['seconds']:,.0f} s, {size}")
            return 0
        builds = {c: build(Path(tmp) / f"s{c}", corpus, args.analyzer, c) for c in counts}

        queries = sentences_of(paragraphs)[: args.queries]
        single, batch, results = {}, {}, {}
        for c in counts:
            retriever = BM25Retriever(open_index(Path(tmp) / f"s{c}"))
            retriever.retrieve_batch(queries[:10], 100)  # warm (kernels, page cache)
            start = time.perf_counter()
            hits = [retriever.retrieve(q, 100) for q in queries]
            single[c] = len(queries) / (time.perf_counter() - start)
            start = time.perf_counter()
            batched = retriever.retrieve_batch(queries, 100)
            batch[c] = len(queries) / (time.perf_counter() - start)
            results[c] = [[(h.doc_id, h.score) for h in row] for row in hits]
            assert [[(h.doc_id, h.score) for h in row] for row in batched] == results[c]
        equal = {c: sum(a == b for a, b in zip(results[0], results[c], strict=True)) for c in counts[1:]}

    headers = ["", "one index"] + [f"{c} shards" for c in counts[1:]] + [f"ratio {c}" for c in counts[1:]]

    def row(name: str, values: dict[int, float], fmt: str) -> list[str]:
        cells = [format(values[c], fmt) for c in counts]
        return [name, *cells, *(f"{values[c] / values[0]:.2f}x" for c in counts[1:])]

    rows = [
        row("build peak RSS (MiB)", {c: b["peak_mb"] for c, b in builds.items()}, ",.0f"),
        row("build time (s)", {c: b["seconds"] for c, b in builds.items()}, ",.1f"),
        row("index on disk (MiB)", {c: b["mb_on_disk"] for c, b in builds.items()}, ",.0f"),
        row("BM25 top-100 single (q/s)", single, ",.0f"),
        row("BM25 top-100 batch (q/s)", batch, ",.0f"),
    ]
    print(format_table(headers, rows))
    for c, n in equal.items():
        print(f"{c} shards: equal result lists (ids, order, scores) {n} of {len(queries)}")
    if 8 in builds:
        b8, b1 = builds[8], builds[0]
        goals = [
            ("8 shards peak <= 3 GB", b8["peak_mb"] <= 3000 / 1.048576),
            ("8 shards build time <= 1.2x", b8["seconds"] <= 1.2 * b1["seconds"]),
            ("8 shards single q/s >= 0.8x", single[8] >= 0.8 * single[0]),
            ("8 shards batch q/s >= 0.8x", batch[8] >= 0.8 * batch[0]),
        ]
        for goal, met in goals:
            print(f"{'PASS' if met else 'MISS'}  {goal}")
    return 0 if all(n == len(queries) for n in equal.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

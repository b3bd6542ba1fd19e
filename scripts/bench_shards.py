"""Sharded vs unsharded index: build peak memory, build time, query speed, and equality.

Builds the same synthetic Japanese corpus (JSQuAD sentences recombined, see
scripts/_synthetic.py) twice, BM25 only: as one index and with ``--shards S``, each build in
its own process so its peak resident memory (VmHWM) is its own. Then searches both with the
same queries (BM25 top-100, single queries) and checks that every result list is equal:
same ids, same order, same scores. The goal is a build whose peak memory follows the shard,
not the corpus, at no cost in answers.

  python scripts/bench_shards.py --docs 200000 --shards 4
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

    config = BuildConfig(analyzer=args.analyzer, encoder="none", workers=1, shards=args.shards or None)
    start = time.perf_counter()
    build_index(args.path, read_file(args.input), config, progress=False).close()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb()}))
    return 0


def build(path: Path, input_file: Path, analyzer: str, shards: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", "--path", str(path), "--input", str(input_file),
               "--analyzer", analyzer, "--shards", str(shards)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]), mb_on_disk=dir_size_mb(path))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=200_000, help="synthetic documents (default 200,000)")
    p.add_argument("--shards", type=int, default=4, help="shards of the sharded build (default 4)")
    p.add_argument("--queries", type=int, default=500, help="queries searched on both (default 500)")
    p.add_argument("--analyzer", default="ja-surface", help="analyzer of both builds (default ja-surface)")
    p.add_argument("--quick", action="store_true", help="20,000 documents, 200 queries")
    p.add_argument("--jsquad", type=Path, default=JSQUAD, help="JSQuAD valid file (the sentences)")
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
        print(f"{args.docs:,} synthetic documents, analyzer {args.analyzer}; building ...", file=sys.stderr)
        one = build(Path(tmp) / "one", corpus, args.analyzer, 0)
        many = build(Path(tmp) / "many", corpus, args.analyzer, args.shards)

        queries = sentences_of(paragraphs)[: args.queries]
        timings, results = [], []
        for name in ("one", "many"):
            retriever = BM25Retriever(open_index(Path(tmp) / name))
            retriever.retrieve(queries[0], 100)  # warm (kernels, page cache)
            start = time.perf_counter()
            hits = [retriever.retrieve(q, 100) for q in queries]
            timings.append(len(queries) / (time.perf_counter() - start))
            results.append([[(h.doc_id, h.score) for h in row] for row in hits])
        equal = sum(a == b for a, b in zip(results[0], results[1], strict=True))

    rows = [
        ["build peak RSS (MiB)", f"{one['peak_mb']:,.0f}", f"{many['peak_mb']:,.0f}",
         f"{many['peak_mb'] / one['peak_mb']:.2f}x"],
        ["build time (s)", f"{one['seconds']:,.1f}", f"{many['seconds']:,.1f}",
         f"{many['seconds'] / one['seconds']:.2f}x"],
        ["index on disk (MiB)", f"{one['mb_on_disk']:,.0f}", f"{many['mb_on_disk']:,.0f}",
         f"{many['mb_on_disk'] / one['mb_on_disk']:.2f}x"],
        ["BM25 top-100 (q/s)", f"{timings[0]:,.0f}", f"{timings[1]:,.0f}", f"{timings[1] / timings[0]:.2f}x"],
    ]  # fmt: skip
    print(format_table(["", "one index", f"{args.shards} shards", "ratio"], rows))
    print(f"equal result lists (ids, order, scores): {equal} of {len(queries)}")
    return 0 if equal == len(queries) else 1


if __name__ == "__main__":
    sys.exit(main())

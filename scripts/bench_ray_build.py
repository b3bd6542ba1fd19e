"""A sharded build in-process vs on a local Ray cluster (``tansaku build --shards N [--ray]``).

Builds the shipped sample and a synthetic Japanese corpus (JSQuAD sentences recombined, see
scripts/_synthetic.py) BM25 only, both ways, with the same shards; prints each build's time
and stages, and checks the two indexes are the same: manifests (but for the build's timings),
every shard's arrays, and BM25 top-100 results of a few hundred queries (ids and scores, ==).

The Ray cluster is a local one of ``--cpus`` CPUs started here (its start-up is timed on its
own). Its first build also starts Ray's worker processes; each build starts its own actor pools.

  python scripts/bench_ray_build.py                    # the sample and 20,000 documents, 4 shards
  python scripts/bench_ray_build.py --docs 100000 --shards 8
  python scripts/bench_ray_build.py --quick            # the sample and 2,000 documents
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import format_table  # noqa: E402
from _synthetic import jsquad_paragraphs, synthetic_records  # noqa: E402

JSQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsquad" / "valid-v1.3.json"


def write_corpus(path: Path, n: int, jsquad: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for record in synthetic_records(jsquad_paragraphs(jsquad), n):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def same_index(a: Path, b: Path, queries: list[str]) -> bool:
    """Manifests (less timings), arrays and BM25 top-100 lists equal."""
    from tansaku.index import open_index
    from tansaku.retrieve import BM25Retriever

    def manifest(path: Path) -> dict:
        data = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        data.pop("created_at")
        return {**data, "build": data["build"]["config"]}

    if manifest(a) != manifest(b):
        return False
    for x in sorted(a.rglob("*.npy")):
        if not np.array_equal(np.load(x), np.load(b / x.relative_to(a))):
            return False
    one, two = open_index(a), open_index(b)
    try:
        for query in queries:
            h1, h2 = BM25Retriever(one).retrieve(query, 100), BM25Retriever(two).retrieve(query, 100)
            if [(h.doc_id, h.score) for h in h1] != [(h.doc_id, h.score) for h in h2]:
                return False
    finally:
        one.close()
        two.close()
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=20_000, help="synthetic documents (default 20,000)")
    p.add_argument("--shards", type=int, default=4, help="shards of every build (default 4)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    p.add_argument("--queries", type=int, default=300, help="BM25 queries compared (default 300)")
    p.add_argument("--repeat", type=int, default=1, help="builds of each kind, alternating (default 1)")
    p.add_argument("--quick", action="store_true", help="2,000 synthetic documents")
    p.add_argument("--jsquad", type=Path, default=JSQUAD, help="JSQuAD valid file (the sentences)")
    args = p.parse_args(argv)
    docs = 2_000 if args.quick else args.docs

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from tansaku.index import SAMPLE_CORPUS, BuildConfig, build_index, read_file
    from tansaku.pipeline.cluster.build import build_on_ray

    with tempfile.TemporaryDirectory(prefix="bench-ray-build-") as tmp_name:
        tmp = Path(tmp_name)
        synthetic = write_corpus(tmp / "synthetic.jsonl", docs, args.jsquad)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False)
        started = time.perf_counter() - t0
        print(f"local Ray cluster of {args.cpus} CPUs started in {started:.1f} s", file=sys.stderr)
        rows = []
        for name, corpus in (("sample", SAMPLE_CORPUS), (f"synthetic {docs:,}", synthetic)):
            config = BuildConfig(encoder="none", shards=args.shards)
            with open(corpus, encoding="utf-8") as fh:
                texts = [json.loads(line)["text"] for line in fh]
            queries = [t[:20] for t in texts[:: max(1, len(texts) // args.queries)]][: args.queries]
            seconds: dict[str, list[float]] = {"in-process": [], "ray": []}
            for rep in range(args.repeat):
                # alternate which build goes first: other work on the machine varies
                for how in ("in-process", "ray") if rep % 2 == 0 else ("ray", "in-process"):
                    print(f"{name}: building {how} ...", file=sys.stderr, flush=True)
                    path = tmp / f"{name.split()[0]}-{how}"
                    t0 = time.perf_counter()
                    if how == "ray":
                        build_on_ray(path, [corpus], config, progress=False).close()
                    else:
                        build_index(path, read_file(corpus), config, progress=False).close()
                    seconds[how].append(time.perf_counter() - t0)
                    stages = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["build"]
                    print(
                        f"  {seconds[how][-1]:.1f} s: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in stages["seconds"].items()),
                        file=sys.stderr,
                    )
            equal = same_index(tmp / f"{name.split()[0]}-ray", tmp / f"{name.split()[0]}-in-process", queries)
            best = {how: min(times) for how, times in seconds.items()}
            rows.append(
                [
                    name,
                    " / ".join(f"{t:.1f}" for t in seconds["in-process"]),
                    " / ".join(f"{t:.1f}" for t in seconds["ray"]),
                    f"{best['ray'] / best['in-process']:.2f}x",
                    "yes" if equal else "NO",
                ]
            )
        ray.shutdown()
    headers = ["corpus", "in-process s", "ray s", "ray / in-process (best)", "equal"]
    print(format_table(headers, rows))
    return 0 if all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

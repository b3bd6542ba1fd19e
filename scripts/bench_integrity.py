"""What integrity costs: index open time, checksum throughput, and `tansaku check` time.

Builds a synthetic index (random words with a Zipf-like frequency, the ``words`` analyzer,
random unit vectors in a Flat FAISS index, optionally sharded), then measures

* open: ``open_index(path)`` (median of ``--repeat`` opens, files in the page cache), and the
  first dense search after it (FAISS is read on first use);
* checksum: CRC-32 (``zlib.crc32``, 1 MiB reads) of every file, in GB/s;
* check: :func:`tansaku.index.verify_index` on the whole index.

  python scripts/bench_integrity.py --docs 200000 --dim 64
  python scripts/bench_integrity.py --path /tmp/idx --reuse      # measure an existing index
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class RandomEncoder:
    """Seeded random unit vectors: an encoder that costs nothing, for size and speed only."""

    name = "random-bench"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._rng = np.random.default_rng(0)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    encode_queries = _encode
    encode_documents = _encode

    def to_config(self) -> dict[str, Any]:
        return {"type": "random-bench", "dim": self.dim}


def records(n: int, vocab: int, seed: int = 0) -> Iterator[Any]:
    from tansaku.index import Record

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    weights = 1.0 / np.arange(1, vocab + 1)
    weights /= weights.sum()
    for i in range(n):
        picked = rng.choice(words, size=int(rng.integers(40, 120)), p=weights)
        yield Record(f"d{i}", " ".join(picked.tolist()))


def build(path: Path, args: argparse.Namespace) -> float:
    from tansaku.index import BuildConfig, FaissParams, build_index

    config = BuildConfig(analyzer="words", shards=args.shards or None, faiss=FaissParams(kind="flat"))
    encoder = RandomEncoder(args.dim) if args.dim else None
    start = time.perf_counter()
    build_index(path, records(args.docs, args.vocab), config, encoder=encoder, progress=False).close()
    return time.perf_counter() - start


def median_seconds(fn: Any, repeat: int) -> float:
    """The median of ``repeat`` runs (the machine's load varies: see also --repeat)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=200_000)
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=64, help="vector dimension (0: BM25 only, also with --reuse)")
    p.add_argument("--shards", type=int, default=0)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--path", type=Path, help="where the index is (default: a temporary directory)")
    p.add_argument("--reuse", action="store_true", help="measure the index at --path without building")
    args = p.parse_args(argv)

    from tansaku.index import open_index

    tmp = tempfile.TemporaryDirectory(prefix="tansaku-bench-integrity-")
    path = args.path or Path(tmp.name) / "idx"
    out: dict[str, Any] = {}
    if not args.reuse:
        out["build_s"] = round(build(path, args), 2)
    files = [f for f in path.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    out["index_mb"] = round(size / 2**20, 1)

    def open_close() -> None:
        open_index(path).close()

    open_close()  # page cache and numba warm
    out["open_ms"] = round(1000 * median_seconds(open_close, args.repeat), 1)
    if args.dim:
        query = RandomEncoder(args.dim).encode_queries(["q"])

        def first_dense() -> None:
            index = open_index(path)
            index.dense.search(query, 10)
            index.close()

        out["open_plus_first_dense_search_ms"] = round(1000 * median_seconds(first_dense, args.repeat), 1)

    import tansaku.index

    if hasattr(tansaku.index, "verify_index"):  # not in versions before integrity checks
        from tansaku.index.checksums import file_checksum

        start = time.perf_counter()
        for f in files:
            file_checksum(f)
        out["checksum_gb_per_s"] = round(size / 1e9 / (time.perf_counter() - start), 2)
        from tansaku.index import verify_index

        start = time.perf_counter()
        report = verify_index(path)
        out["check_s"] = round(time.perf_counter() - start, 2)
        out["check_ok"] = report.ok
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

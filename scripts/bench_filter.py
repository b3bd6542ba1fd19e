#!/usr/bin/env python3
"""Metadata filters at scale: filtering before the top-k vs filtering an unfiltered top-1,000.

Corpus: the synthetic Japanese corpus of scripts/_synthetic.py (JSQuAD sentences recombined,
seeded), --docs documents (default 1,000,000; --quick 20,000), each with ``bucket`` uniform in
0-9999. It is built with tansaku's own builder (``build_index``, encoder "none": BM25 over
MeCab tokens, SQLite corpus), streamed, so memory stays bounded; --index DIR keeps the built
index and reuses it on the next run when its document count matches.

Filters: {"bucket": {"$lt": B}} with B = 5000, 500 and 5, i.e. 50 %, 5 % and 0.05 % of the
documents. "mask ms" is the first use of a filter (one SQLite scan of the metadata column);
it is cached per index version afterwards, as in a running server.

Per selectivity and stage, one query per call (as a search request makes):
  pre   tansaku: the filter applied before the top-k (BM25Index.top_k(..., allowed=mask);
        DenseIndex.search(..., allowed=mask): exact scoring of small allowed sets, else a FAISS
        id selector with nprobe / selectivity lists)
  post  the baseline: an unfiltered top-1,000, non-matching documents dropped, first 100 kept
Recall@100 is measured against the exact filtered top-100 (BM25: the numpy reference scorer
BM25Index.get_scores over every document, masked; dense: exact inner products over the
allowed vectors). Ties count as found (a document scoring at least the 100th true score).
Queries are pre-tokenised (BM25) so both sides time the same work.

Dense part (--dense-dim D, default 64; 0 skips it): encoding 1M texts takes hours on 2 cores,
so each document position gets a vector from the Gaussian mixture of scripts/bench_faiss.py
instead (L2-normalised; queries are held-out draws). FAISS under a filter depends on the
vector geometry and the allowed set, not on where the vectors came from. Flat and IVFPQ
(tansaku's planner: nlist ~ 4 sqrt(N), m = D/4, nprobe 16, re-scoring 4k) share the masks.

Sizes and time (2 cores): --quick (20k docs, 100 queries) about a minute; the default 1M docs
spends most of its time building the BM25 index (~1 h of MeCab on 2 busy cores) and training
IVFPQ; peak RSS is printed. With the default "ja" analyzer (words + character bigrams) the 1M
build was OOM-killed at 22.7 GB RSS on a 23 GB machine once tokenising had finished (BM25
matrix construction); --analyzer ja-surface (words only) builds it in less.

Examples:
  python scripts/bench_filter.py --quick
  python scripts/bench_filter.py --index /tmp/filter-1m            # 1M docs, index kept
  python scripts/bench_filter.py --docs 200000 --dense-dim 0 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import format_table, peak_rss_mb
from _synthetic import jsquad_paragraphs, synthetic_records

from tansaku.index import BuildConfig, DenseIndex, FaissParams, Index, build_index, read_dicts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSQUAD = REPO.parent / "shared" / "data" / "jsquad" / "valid-v1.3.json"
SELECTIVITIES = ((5000, "50%"), (500, "5%"), (5, "0.05%"))
K = 100
POST_K = 1000


def jsquad_questions(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    questions = [qa["question"] for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]
    return questions[:n]


def open_or_build(path: Path, jsquad: Path, n_docs: int, analyzer: str, quiet: bool) -> tuple[Index, float]:
    """The index at ``path`` if it holds ``n_docs`` documents, else a fresh build."""
    if (path / "manifest.json").exists():
        index = Index.open(path)
        if len(index) == n_docs:
            return index, 0.0
        index.close()
    start = time.perf_counter()
    records = read_dicts(synthetic_records(jsquad_paragraphs(jsquad), n_docs))
    config = BuildConfig(analyzer=analyzer, encoder="none")
    index = build_index(
        path,
        records,
        config,
        progress=not quiet,
        total=n_docs,
        log=None if quiet else lambda m: print(m, file=sys.stderr),
    )
    return index, time.perf_counter() - start


def timed_loop(fn: Callable[[int], Any], n: int, limit_s: float) -> tuple[float, list[Any]]:
    """Queries/s over calls fn(0..n-1) (stopping early after ``limit_s``) and their results."""
    out = []
    start = time.perf_counter()
    for i in range(n):
        out.append(fn(i))
        if time.perf_counter() - start > limit_s:
            break
    return len(out) / (time.perf_counter() - start), out


def recall_at_k(found: np.ndarray, true_scores: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k found; a found document tied with the k-th true score counts."""
    if len(truth) == 0:
        return 1.0
    kth = true_scores[truth[-1]]
    return min(len(truth), int(np.sum(true_scores[found] >= kth))) / len(truth)


def bm25_rows(
    index: Index, queries: list[str], masks: dict[str, np.ndarray], mask_ms: dict[str, float], limit_s: float
) -> list[dict[str, Any]]:
    bm25 = index.bm25
    tokens = [index.analyzer.tokenize(q) for q in queries]
    bm25.top_k(tokens[0], K)  # compile/load the kernel before timing
    timed: dict[str, tuple[float, list[np.ndarray], float, list[np.ndarray]]] = {}
    for label, mask in masks.items():

        def pre(i: int, m: np.ndarray = mask) -> np.ndarray:
            return bm25.top_k(tokens[i], K, allowed=m)[0]

        def post(i: int, m: np.ndarray = mask) -> np.ndarray:
            pos = bm25.top_k(tokens[i], POST_K)[0]
            return pos[m[pos]][:K]

        timed[label] = (*timed_loop(pre, len(tokens), limit_s), *timed_loop(post, len(tokens), limit_s))
    # The reference: every document's score by the plain numpy scorer, one query at a time
    # (memory stays at one score array, whatever the number of queries).
    recalls: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label in masks}
    for i, t in enumerate(tokens):
        scores = bm25.get_scores(t)
        for label, mask in masks.items():
            allowed = np.flatnonzero(mask & (scores > 0))
            truth = allowed[np.lexsort((allowed, -scores[allowed]))[:K]]
            _, pres, _, posts = timed[label]
            for found, out in ((pres, recalls[label][0]), (posts, recalls[label][1])):
                if i < len(found):
                    out.append(recall_at_k(found[i], scores, truth))
    return [
        _row(
            "bm25",
            label,
            mask,
            mask_ms[label],
            timed[label][0],
            recalls[label][0],
            timed[label][2],
            recalls[label][1],
        )
        for label, mask in masks.items()
    ]


def unfiltered_recall(index: DenseIndex, vectors: np.ndarray, queries: np.ndarray) -> float:
    """The index's own recall@100 without a filter (what a filtered search can hope to keep)."""
    found = index.search(queries, K)[1]
    recalls = []
    for q, pos in zip(queries, found, strict=True):
        scores = vectors @ q
        recalls.append(recall_at_k(pos[pos >= 0], scores, np.argsort(-scores, kind="stable")[:K]))
    return float(np.mean(recalls))


def dense_rows(
    kind: str,
    index: DenseIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    masks: dict[str, np.ndarray],
    mask_ms: dict[str, float],
    limit_s: float,
) -> list[dict[str, Any]]:
    base = round(unfiltered_recall(index, vectors, queries), 4)
    rows = [
        {
            "stage": kind,
            "selectivity": "100%",
            "allowed": len(vectors),
            "mask_ms": 0.0,
            "pre_qps": None,
            "pre_recall": base,
            "post_qps": None,
            "post_recall": base,
            "queries": len(queries),
        }
    ]
    for label, mask in masks.items():
        allowed = np.flatnonzero(mask)

        def recall_of(i: int, found: np.ndarray, allowed: np.ndarray = allowed) -> float:
            scores = np.full(len(vectors), -np.inf, dtype=np.float32)
            scores[allowed] = vectors[allowed] @ queries[i]
            return recall_at_k(found, scores, allowed[np.lexsort((allowed, -scores[allowed]))[:K]])

        def pre(i: int, m: np.ndarray = mask) -> np.ndarray:
            pos = index.search(queries[i : i + 1], K, allowed=m)[1][0]
            return pos[pos >= 0]

        def post(i: int, m: np.ndarray = mask) -> np.ndarray:
            pos = index.search(queries[i : i + 1], POST_K)[1][0]
            pos = pos[pos >= 0]
            return pos[m[pos]][:K]

        pre_qps, pres = timed_loop(pre, len(queries), limit_s)
        post_qps, posts = timed_loop(post, len(queries), limit_s)
        rows.append(
            _row(
                kind,
                label,
                mask,
                mask_ms[label],
                pre_qps,
                [recall_of(i, f) for i, f in enumerate(pres)],
                post_qps,
                [recall_of(i, f) for i, f in enumerate(posts)],
            )
        )
    return rows


def _row(
    stage: str,
    label: str,
    mask: np.ndarray,
    mask_ms: float,
    pre_qps: float,
    pre_recall: list[float],
    post_qps: float,
    post_recall: list[float],
) -> dict[str, Any]:
    return {
        "stage": stage,
        "selectivity": label,
        "allowed": int(mask.sum()),
        "mask_ms": round(mask_ms, 1),
        "pre_qps": round(pre_qps, 1),
        "pre_recall": round(float(np.mean(pre_recall)), 4),
        "post_qps": round(post_qps, 1),
        "post_recall": round(float(np.mean(post_recall)), 4),
        "queries": len(pre_recall),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=1_000_000, help="documents (default 1,000,000)")
    p.add_argument("--queries", type=int, default=200, help="JSQuAD questions used (default 200)")
    p.add_argument("--jsquad", type=Path, default=DEFAULT_JSQUAD, help="JSQuAD valid file")
    p.add_argument(
        "--index",
        type=Path,
        help="keep the built index here and reuse it when its size matches "
        "(default: a temporary directory, deleted afterwards)",
    )
    p.add_argument(
        "--analyzer",
        default="ja",
        help="analyzer preset of the BM25 index (default ja; ja-surface has no "
        "character bigrams, so fewer postings: for 1M documents on a small "
        "machine)",
    )
    p.add_argument(
        "--dense-dim",
        type=int,
        default=64,
        help="dimension of the random dense vectors (default 64; 0: BM25 only)",
    )
    p.add_argument(
        "--limit-s", type=float, default=20.0, help="stop timing a cell after this many seconds (default 20)"
    )
    p.add_argument("--quick", action="store_true", help="20,000 documents, 100 queries")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.docs, args.queries, args.limit_s = 20_000, 100, 5.0
    if not args.jsquad.exists():
        print(f"JSQuAD file not found: {args.jsquad}", file=sys.stderr)
        return 2
    tmp = None
    if args.index is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-filter-"))
        args.index = tmp / "index"
    try:
        return run(args)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    index, build_s = open_or_build(args.index, args.jsquad, args.docs, args.analyzer, args.quiet)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    say(f"index: {len(index):,} documents" + (f", built in {build_s:.0f} s" if build_s else ", reused"))
    queries = jsquad_questions(args.jsquad, args.queries)
    masks, mask_ms = {}, {}
    for bucket, label in SELECTIVITIES:
        start = time.perf_counter()
        mask = index.filter_mask({"bucket": {"$lt": bucket}})
        mask_ms[label] = (time.perf_counter() - start) * 1000
        assert mask is not None
        masks[label] = mask
    rows = bm25_rows(index, queries, masks, mask_ms, args.limit_s)
    if args.dense_dim:
        from bench_faiss import mixture

        n = len(index)
        data = mixture(n + len(queries), args.dense_dim, clusters=1000, spread=0.6, seed=0)
        vectors, qvecs = data[:n], data[n:]
        rows += dense_rows(
            "flat",
            DenseIndex.build(vectors, FaissParams(kind="flat")),
            vectors,
            qvecs,
            masks,
            mask_ms,
            args.limit_s,
        )
        t0 = time.perf_counter()
        built = DenseIndex.build(vectors, FaissParams(kind="ivfpq"))
        say(f"IVFPQ: {built.reason} ({time.perf_counter() - t0:.0f} s)")
        saved = Path(tempfile.mkdtemp(prefix="bench-filter-ivf-"))
        try:
            built.save(saved)
            del built
            ivf = DenseIndex.load(saved, FaissParams(kind="ivfpq"), mmap=True)
            rows += dense_rows("ivfpq", ivf, vectors, qvecs, masks, mask_ms, args.limit_s)
        finally:
            shutil.rmtree(saved, ignore_errors=True)
    index.close()
    if args.json:
        json.dump(
            {"docs": args.docs, "queries": len(queries), "rows": rows, "peak_rss_mb": round(peak_rss_mb())},
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    print(
        format_table(
            ["stage", "selectivity", "allowed", "mask ms", "pre q/s", "pre R@100", "post q/s", "post R@100"],
            [
                [
                    r["stage"],
                    r["selectivity"],
                    f"{r['allowed']:,}",
                    f"{r['mask_ms']:,.0f}",
                    _qps(r["pre_qps"]),
                    f"{r['pre_recall']:.4f}",
                    _qps(r["post_qps"]),
                    f"{r['post_recall']:.4f}",
                ]
                for r in rows
            ],
        )
    )
    print(
        f"{args.docs:,} docs, {len(queries)} queries, k={K}, post = unfiltered top-{POST_K:,} "
        f"then filter; 100% rows = no filter (the index's own recall@100); "
        f"peak RSS {peak_rss_mb():,.0f} MB"
    )
    print(verdict(rows))
    return 0


def _qps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def verdict(all_rows: list[dict[str, Any]]) -> str:
    """PASS: at every selectivity the exact stages (BM25, Flat) keep recall 1 and IVFPQ keeps
    its unfiltered recall (within 0.02), and no stage falls below the post-filter baseline
    (IVFPQ is approximate on both sides: within 0.01)."""
    unfiltered = {r["stage"]: r["pre_recall"] for r in all_rows if r["selectivity"] == "100%"}
    rows = [r for r in all_rows if r["selectivity"] != "100%"]
    exact = ("bm25", "flat")
    ok = all(
        r["pre_recall"] >= (0.999 if r["stage"] in exact else min(0.9, unfiltered[r["stage"]] - 0.02))
        for r in rows
    )
    ok = ok and all(
        r["pre_recall"] >= r["post_recall"] - (1e-9 if r["stage"] in exact else 0.01) for r in rows
    )
    worst_post = min(rows, key=lambda r: r["post_recall"])
    worst_pre = min(rows, key=lambda r: r["pre_recall"])
    speed = [r["pre_qps"] / r["post_qps"] for r in rows if r["post_qps"]]
    return (
        f"VERDICT: {'PASS' if ok else 'MISS'}: filtering before the top-k keeps recall@100 >= "
        f"{worst_pre['pre_recall']:.3f} at every selectivity (worst: {worst_pre['stage']} "
        f"{worst_pre['selectivity']}), while filtering an unfiltered top-{POST_K:,} falls to "
        f"{worst_post['post_recall']:.3f} ({worst_post['stage']} {worst_post['selectivity']}); "
        f"pre-filter speed {min(speed):.2f}-{max(speed):.2f}x the baseline's q/s"
    )


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Retrieval quality on JSQuAD: BM25, LSA, dense encoders, hybrid fusions (+ a reranker).

Builds a tansaku index over the JSQuAD valid paragraphs (corpus = distinct paragraphs,
query = question, relevant = its paragraph) and prints nDCG@10, MRR@10, Recall@10/100
for each first stage, each fusion and (with --reranker) each of those + the reranker,
with the time each took. Fusion weights are swept on one half of the articles ("tune")
and reported on the other ("check") as well as on all queries, so a default is never
chosen on the data it is scored on alone.

Examples:
  python scripts/bench_quality.py                       # bm25 + LSA + e5-small + fusions
  python scripts/bench_quality.py --encoders e5-small,corpus --reranker /models/reranker
  python scripts/bench_quality.py --quick               # 500 queries, e5-small only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _bench_common import format_table

from tansaku.index import BuildConfig, Hit, build_index, read_dicts
from tansaku.pipeline.eval.datasets import RetrievalDataset, load_jsquad
from tansaku.pipeline.eval.metrics import evaluate
from tansaku.retrieve import BM25Retriever, DenseRetriever, reciprocal_rank_fusion, score_fusion

REPO = Path(__file__).resolve().parent.parent
METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def split_by_article(ds: RetrievalDataset, qids: list[str]) -> dict[str, list[str]]:
    """Alternate articles into tune/check halves (no article in both)."""
    articles = sorted(set(ds.groups.values()))
    tune_articles = set(articles[::2])
    doc_of = {q: next(iter(ds.qrels[q])) for q in qids}
    tune = [q for q in qids if ds.groups[doc_of[q]] in tune_articles]
    return {"all": qids, "tune": tune, "check": [q for q in qids if q not in set(tune)]}


def lsa_run(ds: RetrievalDataset, index, qids: list[str], dim: int = 256) -> dict[str, list[Hit]]:
    """LSA baseline: (1 + log tf) · idf over the index's tokens, truncated SVD, cosine top-100."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    an = index.analyzer
    docs = [an.tokenize(f"{d['title']} {d['text']}") for d in ds.corpus]
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, toks in enumerate(docs):
        for t in toks:
            rows.append(i)
            cols.append(vocab.setdefault(t, len(vocab)))
    tf = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(docs), len(vocab)))
    tf.sum_duplicates()
    tf.data = 1 + np.log(tf.data)  # sublinear tf: LSA's strongest common variant here
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    x = tf.multiply(idf).tocsr()
    u, s, vt = svds(x.astype(np.float64), k=min(dim, min(x.shape) - 1), random_state=0)
    proj = vt.T / s  # query fold-in: q · V Σ^-1
    dvec = u / np.linalg.norm(u, axis=1, keepdims=True).clip(1e-12)
    out = {}
    for q in qids:
        qv = np.zeros(len(vocab))
        for t in an.tokenize(ds.queries[q]):
            if t in vocab:
                qv[vocab[t]] += 1
        qv[qv > 0] = (1 + np.log(qv[qv > 0])) * idf[qv > 0]
        qd = qv @ proj
        qd /= max(np.linalg.norm(qd), 1e-12)
        sims = dvec @ qd
        top = np.argsort(-sims)[:100]
        out[q] = [Hit(ds.corpus[i]["id"], float(sims[i]), r, "lsa") for r, i in enumerate(top, 1)]
    return out


def score(results: dict[str, list[Hit]], ds: RetrievalDataset, qids: list[str]) -> dict[str, float]:
    run = {q: {h.doc_id: h.score for h in results[q]} for q in qids}
    return evaluate({q: ds.qrels[q] for q in qids}, run, METRICS)


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jsquad", type=Path, default=REPO.parent / "shared/data/jsquad/valid-v1.3.json")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/tansaku-bench-quality"),
        help="where the indexes are built (default: /tmp/tansaku-bench-quality)",
    )
    p.add_argument(
        "--encoders",
        default="e5-small",
        help="comma-separated dense encoders: e5-small, corpus, or a model path",
    )
    p.add_argument("--reranker", help="cross-encoder directory or id to rerank each first stage")
    p.add_argument("--rerank-k", type=int, default=100, help="candidates reranked")
    p.add_argument("--queries", type=int, help="use only the first N questions")
    p.add_argument(
        "--weights",
        default="0.3,0.4,0.5,0.6,0.7",
        help="dense weights swept for score fusion (BM25 weight = 1 - w)",
    )
    p.add_argument("--quick", action="store_true", help="500 questions")
    p.add_argument("--json", action="store_true", help="also print all numbers as JSON")
    args = p.parse_args(argv)
    if not args.jsquad.exists():
        p.error(f"JSQuAD file not found: {args.jsquad}")
    ds = load_jsquad(args.jsquad)
    qids = list(ds.queries)[: 500 if args.quick else args.queries]
    splits = split_by_article(ds, qids)
    texts = [ds.queries[q] for q in qids]
    rows: list[dict[str, object]] = []

    def report(name: str, results: dict[str, list[Hit]], seconds: float, note: str = "") -> None:
        entry = {"system": name, "seconds": round(seconds, 2), "note": note}
        for split, ids in splits.items():
            entry[split] = score(results, ds, ids)
        rows.append(entry)
        print(f"  {name}: nDCG@10 {entry['all']['ndcg@10']:.4f} ({seconds:.1f} s)", file=sys.stderr)

    print(
        f"JSQuAD: {len(ds.corpus)} paragraphs, {len(qids)} questions "
        f"(tune {len(splits['tune'])} / check {len(splits['check'])})",
        file=sys.stderr,
    )
    base, build_s = timed(lambda: build_index(args.workdir / "bm25", read_dicts(ds.corpus), progress=False))
    bm25, t = timed(lambda: dict(zip(qids, BM25Retriever(base).retrieve_batch(texts, 100), strict=True)))
    report("bm25", bm25, t, f"index {build_s:.1f} s")
    lsa, t = timed(lambda: lsa_run(ds, base, qids))
    report("lsa-256 (dense baseline)", lsa, t)
    reranker = None
    if args.reranker:
        from tansaku.rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(args.reranker)
    stages = {"bm25": bm25}
    for spec in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        label = Path(spec).name if "/" in spec else spec
        if label in stages:  # e.g. an imported e5-small directory next to the bundled one
            label = spec
        index, build_s = timed(
            lambda spec=spec, label=label: build_index(
                args.workdir / label.replace("/", "_"),
                read_dicts(ds.corpus),
                BuildConfig(encoder=spec),
                progress=False,
            )
        )
        dense, t = timed(
            lambda index=index: dict(zip(qids, DenseRetriever(index).retrieve_batch(texts, 100), strict=True))
        )
        report(label, dense, t, f"index+encode {build_s:.1f} s ({len(ds.corpus) / build_s:.1f} docs/s)")
        stages[label] = dense
        fused, t = timed(
            lambda dense=dense: {q: reciprocal_rank_fusion([bm25[q], dense[q]], 100) for q in qids}
        )
        report(f"bm25+{label} rrf", fused, t)
        stages[f"bm25+{label} rrf"] = fused
        for w in [float(x) for x in args.weights.split(",")]:
            fused, t = timed(
                lambda dense=dense, w=w: {
                    q: score_fusion([bm25[q], dense[q]], 100, weights=(1 - w, w)) for q in qids
                }
            )
            report(f"bm25+{label} score w={w}", fused, t)
            stages[f"bm25+{label} score w={w}"] = fused
    if reranker is not None:
        for name, results in list(stages.items()):
            hydrated = {q: base.hydrate(results[q][: args.rerank_k]) for q in qids}
            reranked, t = timed(
                lambda hydrated=hydrated: {
                    q: reranker.rerank(ds.queries[q], hydrated[q])  # scores each hit's "title text"
                    for q in qids
                }
            )
            report(f"{name} + rerank", reranked, t)
    headers = [
        "system",
        *(f"{s}:{m}" for s in ("all",) for m in METRICS),
        "tune nDCG@10",
        "check nDCG@10",
        "seconds",
        "note",
    ]
    table = [
        [
            r["system"],
            *(f"{r['all'][m]:.4f}" for m in METRICS),
            f"{r['tune']['ndcg@10']:.4f}",
            f"{r['check']['ndcg@10']:.4f}",
            f"{r['seconds']}",
            r["note"],
        ]
        for r in rows
    ]
    print(format_table(headers, table))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

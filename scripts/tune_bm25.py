#!/usr/bin/env python3
"""Grid-search the Japanese analyzer, BM25 k1/b and the n-gram weight on JSQuAD.

Data: the JSQuAD valid file (1,145 paragraphs = documents, 4,442 questions; each
question's paragraph is its one relevant document), split by article into a "tune"
half and a "check" half exactly as scripts/bench_quality.py does (alternate
articles; no article in both). Every option is scored on both halves (and on all
questions); the best option is CHOSEN ON THE TUNE HALF ONLY and the check half shows
whether it holds on unseen articles.

Cost: each analyzer variant is tokenised once (documents "title text" and questions,
a few seconds each); the word stream and the character n-gram stream are kept apart,
so for every k1/b pair two sparse products give both streams' scores, and every
n-gram weight and field layout is a cheap linear combination of them:

  one field   : words and n-grams share one BM25 index (one length normalisation,
                one idf table); an n-gram query term counts ``weight`` times.
  two fields  : words and n-grams are two BM25 indexes; score = words + weight * grams.

The default grid (--variants all: 15 variants x 6 k1 x 4 b x 4 n-gram weights x 2 layouts)
takes ~9 minutes on 2 shared cores; --quick (3 variants, 500 questions, 2 k1 x 2 b x 2
weights) ~1 minute. With --dense e5-small each variant's best one-field option is also
fused with multilingual-e5-small's top-100 (tansaku's score fusion at the dense weights
--fusion-weights, and RRF); the e5 vectors are cached under --cache (encoding JSQuAD's
1,145 paragraphs and 4,442 questions takes ~20 minutes on 2 busy cores, once).

Metrics (one relevant document per question): nDCG@10, MRR@10, R@100, with
tansaku's ranking (only documents sharing a term with the query are returned;
ties break by position); the chosen option is re-checked end to end through a real
index and tansaku.pipeline.eval.metrics (pytrec_eval).

Examples:
  python scripts/tune_bm25.py --quick
  python scripts/tune_bm25.py                                   # the full grid
  python scripts/tune_bm25.py --variants ja,ja-surface --k1 0.9,1.2 --b 0.5 --json
  python scripts/tune_bm25.py --dense e5-small --top 5          # + hybrid with e5-small
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from _bench_common import format_table
from bench_quality import split_by_article

from tansaku.index import BM25Index, BM25Params, Hit
from tansaku.index.analyzer import JapaneseAnalyzer, get_analyzer
from tansaku.pipeline.eval.datasets import RetrievalDataset, load_jsquad
from tansaku.retrieve import reciprocal_rank_fusion, score_fusion

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared/data/jsquad/valid-v1.3.json"

DROP = ["助詞", "助動詞", "補助記号", "記号", "空白"]  # the default drop list
PRON_LIGHT = [*DROP, "代名詞", "動詞-非自立可能"]  # + pronouns and light verbs (する, ある...)
# Analyzer variants: presets, or JSON options over the "ja" preset (tansaku.index.analyzer).
VARIANTS: dict[str, dict | str] = {
    "ja-surface": "ja-surface",
    "surface+2gram": {"form": "surface", "normalize": ["nfkc", "lower"], "drop_pos": [], "ngram": 2},
    "surface+pos": {"form": "surface", "drop_pos": DROP, "ngram": None},
    "lemma+pos": {"drop_pos": DROP, "ngram": None},
    "surface+pos+2gram": {"form": "surface", "drop_pos": DROP, "ngram": 2},
    "surface+pos+2gram(words)": {"form": "surface", "drop_pos": DROP, "ngram": {"n": 2, "source": "words"}},
    "surface+pos+2gram-prolonged": {
        "form": "surface",
        "drop_pos": DROP,
        "ngram": 2,
        "normalize": ["nfkc", "lower"],
    },
    "surface+pos+2gram+repetition": {
        "form": "surface",
        "drop_pos": DROP,
        "ngram": 2,
        "normalize": ["nfkc", "repetition", "prolonged", "lower"],
    },
    "surface+pos+3gram": {"form": "surface", "drop_pos": DROP, "ngram": 3},
    "lemma+pos+2gram": {"drop_pos": DROP, "ngram": 2},
    "surface+pos(+pron)+2gram": {"form": "surface", "drop_pos": [*DROP, "代名詞"], "ngram": 2},
    "surface+pos(+pron+light)+2gram": {"form": "surface", "drop_pos": PRON_LIGHT, "ngram": 2},
    "lemma+pos(+pron+light)+2gram+suffix": {"drop_pos": [*PRON_LIGHT, "接尾辞"], "ngram": 2},
    "lemma+pos(+pron+light)+3gram": {"drop_pos": PRON_LIGHT, "ngram": 3},
    "ja": "ja",  # lemma+pos(+pron+light)+2gram
}
QUICK_VARIANTS = ("ja-surface", "surface+pos", "ja")
METRICS = ("ndcg@10", "mrr@10", "recall@100")


@dataclass
class Streams:
    """A variant's tokens as sparse count matrices: documents and queries × (words | grams)."""

    docs_words: sp.csr_matrix
    docs_grams: sp.csr_matrix
    queries_words: sp.csr_matrix
    queries_grams: sp.csr_matrix
    seconds: float


def count_matrix(token_lists: Sequence[Sequence[str]], vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    rows, cols = [], []
    for i, tokens in enumerate(token_lists):
        for t in tokens:
            j = vocab.get(t)
            if j is None and grow:
                j = vocab[t] = len(vocab)
            if j is not None:
                rows.append(i)
                cols.append(j)
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(token_lists), len(vocab)))
    m.sum_duplicates()
    return m


def tokenise_variant(spec: dict | str, docs: list[str], queries: list[str]) -> Streams:
    analyzer = get_analyzer(spec)
    start = time.perf_counter()
    if isinstance(analyzer, JapaneseAnalyzer):
        d = [analyzer.analyze(t) for t in docs]
        q = [analyzer.analyze(t) for t in queries]
    else:
        d = [(analyzer.tokenize(t), []) for t in docs]
        q = [(analyzer.tokenize(t), []) for t in queries]
    seconds = time.perf_counter() - start
    vw: dict[str, int] = {}
    vg: dict[str, int] = {}
    dw = count_matrix([w for w, _ in d], vw, True)
    dg = count_matrix([g for _, g in d], vg, True)
    return Streams(
        dw,
        dg,
        count_matrix([w for w, _ in q], vw, False),
        count_matrix([g for _, g in q], vg, False),
        seconds,
    )


def bm25_weights(counts: sp.csr_matrix, doc_len: np.ndarray, k1: float, b: float) -> sp.csr_matrix:
    """Terms × documents BM25 weights, computed by tansaku's own BM25Index."""
    index = BM25Index.from_doc_term(
        counts.astype(np.int32), [str(i) for i in range(counts.shape[1])], doc_len, BM25Params(k1=k1, b=b)
    )
    # Every term comes from some document, so none was dropped and rows stay aligned.
    assert len(index.vocab) == counts.shape[1]
    return sp.csr_matrix(
        (index.weights, index.postings, index.indptr), shape=(counts.shape[1], counts.shape[0])
    )


def stream_scores(s: Streams, k1: float, b: float, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(word scores, n-gram scores), queries × documents, for one k1/b and field layout."""
    if layout == "one":
        both = sp.hstack([s.docs_words, s.docs_grams]).tocsr()
        doc_len = np.asarray(both.sum(axis=1)).ravel().astype(np.int32)
        w = bm25_weights(both, doc_len, k1, b)
        nw = s.docs_words.shape[1]
        words = (s.queries_words @ w[:nw]).toarray()
        grams = (s.queries_grams @ w[nw:]).toarray() if s.docs_grams.shape[1] else np.zeros_like(words)
        return words, grams
    dl_w = np.asarray(s.docs_words.sum(axis=1)).ravel().astype(np.int32)
    words = (s.queries_words @ bm25_weights(s.docs_words, dl_w, k1, b)).toarray()
    if not s.docs_grams.shape[1]:
        return words, np.zeros_like(words)
    dl_g = np.asarray(s.docs_grams.sum(axis=1)).ravel().astype(np.int32)
    return words, (s.queries_grams @ bm25_weights(s.docs_grams, dl_g, k1, b)).toarray()


def ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of each query's gold document (tansaku's order); 10**9 if not returned."""
    g = scores[np.arange(len(gold)), gold][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    r = 1 + (scores > g).sum(axis=1) + ((scores == g) & (cols < gold[:, None])).sum(axis=1)
    return np.where(g[:, 0] > 0, r, 10**9)


def metrics_of(r: np.ndarray) -> dict[str, float]:
    return {
        "ndcg@10": float(np.where(r <= 10, 1 / np.log2(r + 1), 0).mean()),
        "mrr@10": float(np.where(r <= 10, 1 / r, 0).mean()),
        "recall@100": float((r <= 100).mean()),
    }


def top_lists(scores: np.ndarray, k: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's top-k (positions, scores) in tansaku's order, matched documents only."""
    out = []
    for row in scores:
        cand = np.flatnonzero(row > 0)
        order = cand[np.lexsort((cand, -row[cand]))][:k]
        out.append((order, row[order]))
    return out


def _hits(pos: np.ndarray, scores: np.ndarray) -> list[Hit]:
    # zero-padded ids: fusion breaks ties by id, which then means by position
    return [
        Hit(f"{p:09d}", float(v), r, "x")
        for r, (p, v) in enumerate(zip(pos.tolist(), scores.tolist(), strict=True), 1)
    ]


def _gold_ranks(fused: list[list[Hit]], gold: np.ndarray) -> np.ndarray:
    out = np.full(len(gold), 10**9)
    for i, hits in enumerate(fused):
        out[i] = next((h.rank for h in hits if int(h.doc_id) == gold[i]), 10**9)
    return out


def fuse_ranks(
    bm25: list[tuple[np.ndarray, np.ndarray]],
    dense: list[tuple[np.ndarray, np.ndarray]],
    gold: np.ndarray,
    w_dense: float,
) -> np.ndarray:
    """Gold ranks after tansaku's score fusion (min-max per list, weighted sum, ties by id)."""
    return _gold_ranks(
        [
            score_fusion([_hits(*b), _hits(*d)], 100, weights=(1 - w_dense, w_dense))
            for b, d in zip(bm25, dense, strict=True)
        ],
        gold,
    )


def rrf_ranks(
    bm25: list[tuple[np.ndarray, np.ndarray]],
    dense: list[tuple[np.ndarray, np.ndarray]],
    gold: np.ndarray,
    rrf_k: int = 60,
) -> np.ndarray:
    """Gold ranks after reciprocal rank fusion (tansaku's ``--fusion rrf``: k=60, ties by id)."""
    return _gold_ranks(
        [
            reciprocal_rank_fusion([_hits(*b), _hits(*d)], 100, rrf_k=rrf_k)
            for b, d in zip(bm25, dense, strict=True)
        ],
        gold,
    )


def dense_lists(
    ds: RetrievalDataset, qids: list[str], cache: Path, name: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """e5-small top-100 per question (cosine), from vectors cached under ``cache``."""
    if name != "e5-small":
        raise SystemExit(f"--dense supports e5-small only, got {name!r}")
    docs = [f"{d['title']} {d['text']}" if d["title"] else d["text"] for d in ds.corpus]
    queries = list(ds.queries.values())
    vectors = []
    encoder = None
    for kind, texts in (("docs", docs), ("queries", queries)):
        key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
        path = cache / f"{kind}-{key}.npy"
        if not path.exists():
            if encoder is None:
                from tansaku.index.encoders.e5 import E5SmallEncoder

                encoder = E5SmallEncoder()
            print(f"encoding {len(texts)} {kind} with e5-small (cached to {path})", file=sys.stderr)
            cache.mkdir(parents=True, exist_ok=True)
            fn = encoder.encode_documents if kind == "docs" else encoder.encode_queries
            np.save(path, fn(texts))
        vectors.append(np.load(path))
    dvec, qvec = vectors
    index_of = {q: i for i, q in enumerate(ds.queries)}
    sims = qvec[[index_of[q] for q in qids]] @ dvec.T
    out = []
    for row in sims:
        top = np.argpartition(-row, 100)[:100]
        top = top[np.lexsort((top, -row[top]))]
        out.append((top, row[top].astype(np.float64)))
    return out


def verify_end_to_end(
    ds: RetrievalDataset, qids: list[str], spec: dict | str, k1: float, b: float, workdir: Path
) -> dict[str, float]:
    """The chosen option through a real index, BM25Retriever and pytrec_eval."""
    from tansaku.index import BuildConfig, build_index, read_dicts
    from tansaku.pipeline.eval.metrics import evaluate
    from tansaku.retrieve import BM25Retriever

    analyzer = spec if isinstance(spec, str) else json.dumps(spec, ensure_ascii=False)
    index = build_index(
        workdir / "verify",
        read_dicts(ds.corpus),
        BuildConfig(analyzer=analyzer, bm25=BM25Params(k1=k1, b=b)),
        progress=False,
    )
    hits = BM25Retriever(index).retrieve_batch([ds.queries[q] for q in qids], 100)
    run = {q: {h.doc_id: h.score for h in hs} for q, hs in zip(qids, hits, strict=True)}
    return evaluate({q: ds.qrels[q] for q in qids}, run, METRICS)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def table(rows: list[dict]) -> str:
    headers = [
        "variant",
        "k1",
        "b",
        "fields",
        "w",
        *(f"{s} {m}" for s in ("tune", "check", "all") for m in ("nDCG@10", "MRR@10", "R@100")),
    ]
    return format_table(
        headers,
        [
            [
                r["variant"],
                f"{r['k1']:g}",
                f"{r['b']:g}",
                r["layout"],
                "-" if r["weight"] is None else f"{r['weight']:g}",
                *(f"{r[s][m]:.4f}" for s in ("tune", "check", "all") for m in METRICS),
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jsquad", type=Path, default=DEFAULT_DATA, help="JSQuAD valid-v1.3.json")
    p.add_argument(
        "--variants",
        default="all",
        help=f"comma-separated analyzer variants, or 'all' (default): {', '.join(VARIANTS)}",
    )
    p.add_argument("--k1", default="0.2,0.3,0.5,0.9,1.2,1.5", help="k1 values (default: 0.2-1.5)")
    p.add_argument("--b", default="0.5,0.6,0.75,0.9", help="b values (default: 0.5,0.6,0.75,0.9)")
    p.add_argument("--weights", default="0.2,0.3,0.5,1", help="n-gram weights (default: 0.2,0.3,0.5,1)")
    p.add_argument("--layouts", default="one,two", help="n-gram field layouts: one, two (default: both)")
    p.add_argument("--queries", type=int, help="use only the first N questions")
    p.add_argument("--top", type=int, default=10, help="rows of the overall ranking (default: 10)")
    p.add_argument(
        "--dense", help="also fuse each variant's best one-field option with this dense encoder (e5-small)"
    )
    p.add_argument(
        "--fusion-weights",
        default="0.3,0.4,0.5,0.6",
        help="dense weights for --dense score fusion (default: 0.3,0.4,0.5,0.6; "
        "tansaku's default hybrid is 0.5)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/tansaku-e5-cache"),
        help="where e5 vectors are cached (default: /tmp/tansaku-e5-cache)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/tansaku-tune-bm25"),
        help="where the end-to-end check builds its index",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the end-to-end re-check")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"500 questions, variants {', '.join(QUICK_VARIANTS)}, k1 0.3,1.5, b 0.6,0.75, weights 0.3,1",
    )
    p.add_argument("--json", action="store_true", help="print every row as JSON too")
    args = p.parse_args(argv)
    if not args.jsquad.exists():
        p.error(f"JSQuAD file not found: {args.jsquad}")
    if args.quick:
        args.variants, args.queries = ",".join(QUICK_VARIANTS), 500
        args.k1, args.b, args.weights = "0.3,1.5", "0.6,0.75", "0.3,1"
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    for name in names:
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    ds = load_jsquad(args.jsquad)
    qids = list(ds.queries)[: args.queries]
    splits = split_by_article(ds, qids)
    col = {d["id"]: i for i, d in enumerate(ds.corpus)}
    gold = np.asarray([col[next(iter(ds.qrels[q]))] for q in qids])
    masks = {name: np.isin(qids, ids) for name, ids in splits.items()}
    docs = [f"{d['title']} {d['text']}" if d["title"] else d["text"] for d in ds.corpus]
    texts = [ds.queries[q] for q in qids]
    print(
        f"JSQuAD: {len(docs)} paragraphs, {len(qids)} questions (tune {masks['tune'].sum()} / "
        f"check {masks['check'].sum()})",
        file=sys.stderr,
    )

    rows: list[dict] = []
    for name in names:
        streams = tokenise_variant(VARIANTS[name], docs, texts)
        has_grams = streams.docs_grams.shape[1] > 0
        layouts = [x for x in args.layouts.split(",") if x] if has_grams else ["one"]
        print(f"{name}: tokenised in {streams.seconds:.1f} s", file=sys.stderr)
        for k1, b, layout in itertools.product(floats(args.k1), floats(args.b), layouts):
            words, grams = stream_scores(streams, k1, b, layout)
            for weight in floats(args.weights) if has_grams else [None]:
                r = ranks(words + weight * grams if weight is not None else words, gold)
                row = {
                    "variant": name,
                    "k1": k1,
                    "b": b,
                    "layout": layout if has_grams else "-",
                    "weight": weight,
                }
                for split, mask in masks.items():
                    row[split] = metrics_of(r[mask])
                rows.append(row)

    def key(row: dict) -> float:
        return row["tune"]["ndcg@10"]

    def best_of(candidates: list[dict]) -> dict:
        return max(candidates, key=key)  # first of equals: grid order

    best = {v: best_of([r for r in rows if r["variant"] == v]) for v in names}
    best_one = {
        v: best_of([r for r in rows if r["variant"] == v and r["layout"] in ("one", "-")]) for v in names
    }
    print("\nBest k1/b/fields/n-gram weight per analyzer variant (chosen on tune):")
    print(table(sorted(best.values(), key=key, reverse=True)))
    two = [r for r in best.values() if r["layout"] == "two"]
    if two:
        print("\n... and the best with the n-grams in the same field as the words (one BM25 index):")
        print(table([best_one[r["variant"]] for r in sorted(two, key=key, reverse=True)]))
    print(f"\nTop {args.top} options overall (by tune nDCG@10):")
    print(table(sorted(rows, key=key, reverse=True)[: args.top]))
    baseline = [r for r in rows if r["variant"] == "ja-surface" and r["k1"] == 1.5 and r["b"] == 0.75]
    if baseline:
        print("\nBaseline (ja-surface, rank-bm25 defaults k1 1.5 b 0.75):")
        print(table(baseline))

    if args.dense:
        dense = dense_lists(ds, qids, args.cache, args.dense)
        dr = np.full(len(qids), 10**9)
        for i, (pos, _) in enumerate(dense):
            hit = np.flatnonzero(pos == gold[i])
            if len(hit):
                dr[i] = hit[0] + 1
        fusion_rows: list[dict[str, Any]] = [
            {"system": f"{args.dense} alone", **{s: metrics_of(dr[m]) for s, m in masks.items()}}
        ]
        for row in sorted(best_one.values(), key=key, reverse=True)[: args.top]:
            streams = tokenise_variant(VARIANTS[row["variant"]], docs, texts)
            words, grams = stream_scores(streams, row["k1"], row["b"], "one")
            lists = top_lists(words + (row["weight"] or 0.0) * grams)
            for w in floats(args.fusion_weights):
                r = fuse_ranks(lists, dense, gold, w)
                label = f"{row['variant']} (k1 {row['k1']:g}, b {row['b']:g}) + {args.dense}, dense w {w:g}"
                fusion_rows.append({"system": label, **{s: metrics_of(r[m]) for s, m in masks.items()}})
            r = rrf_ranks(lists, dense, gold)
            label = f"{row['variant']} (k1 {row['k1']:g}, b {row['b']:g}) + {args.dense}, rrf"
            fusion_rows.append({"system": label, **{s: metrics_of(r[m]) for s, m in masks.items()}})
        print(
            f"\nHybrid with {args.dense} (tansaku's score fusion: min-max per list, BM25 weight "
            f"1 - w, and rrf; each variant's best one-field BM25):"
        )
        print(
            format_table(
                [
                    "system",
                    *(f"{s} {m}" for s in ("tune", "check", "all") for m in ("nDCG@10", "MRR@10", "R@100")),
                ],
                [
                    [fr["system"], *(f"{fr[s][m]:.4f}" for s in ("tune", "check", "all") for m in METRICS)]
                    for fr in fusion_rows
                ],
            )
        )
        rows.extend({"fusion": True, **r} for r in fusion_rows)

    if not args.no_verify:
        row = max(best_one.values(), key=key)
        spec = VARIANTS[row["variant"]]
        if isinstance(spec, dict) and row["weight"] is not None:
            ngram = spec["ngram"] if isinstance(spec["ngram"], dict) else {"n": spec["ngram"]}
            spec = {**spec, "ngram": {**ngram, "weight": row["weight"]}}
        elif spec == "ja" and row["weight"] is not None:
            spec = {"ngram": {"weight": row["weight"]}}
        got = {
            s: verify_end_to_end(ds, ids, spec, row["k1"], row["b"], args.workdir)
            for s, ids in splits.items()
        }
        print(
            f"\nEnd-to-end check of the best one-field option ({row['variant']}, k1 {row['k1']:g}, "
            f"b {row['b']:g}, w {row['weight']}; a real index, BM25Retriever, pytrec_eval): "
            + ", ".join(f"{s} nDCG@10 {got[s]['ndcg@10']:.4f} R@100 {got[s]['recall@100']:.4f}" for s in got)
        )
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

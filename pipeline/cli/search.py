"""``tansaku search`` (ranked hits from an index) and ``tansaku rerank`` (score given documents)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import (
    add_filter_option,
    add_quantize_option,
    add_rerank_options,
    emit_json,
    make_reranker,
    parse_filter_arg,
)


def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search an index and print ranked hits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Search INDEX for QUERY. The first stage (bm25, dense or hybrid) retrieves
--retrieve-k candidates; with --reranker a cross-encoder reorders the best
--rerank-k of them; the best --top-n are printed with titles and snippets.""",
        epilog="""\
examples:
  tansaku search my-index "富士山の高さ"
  tansaku search my-index "検索エンジンの仕組み" -k 100 --mode bm25 --json
  tansaku search my-index "日本の料理" --filter '{"lang": "ja", "year": {"$gte": 2020}}'
""",
    )
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("query", help="the query text")
    p.add_argument(
        "-k", "--top-n", dest="top_n", type=int, default=10, help="number of hits to print (default: 10)"
    )
    p.add_argument(
        "--mode",
        choices=["bm25", "dense", "hybrid"],
        help="first stage (default: the one a trained --reranker's fusion weight was "
        "chosen with, else hybrid if the index has a dense part, else bm25)",
    )
    p.add_argument("--retrieve-k", type=int, help="first-stage candidates (default: max(100, top-n))")
    add_rerank_options(p)
    p.add_argument(
        "--fusion",
        choices=["score", "rrf"],
        default="score",
        help="hybrid fusion: per-query min-max normalised score sum (default; never "
        "below BM25 on JSQuAD) or reciprocal rank fusion (k=60)",
    )
    p.add_argument("--nprobe", type=int, help="IVF lists searched (IVFPQ indexes)")
    add_filter_option(p)
    p.add_argument("--snippet", type=int, default=80, help="snippet length in characters")
    p.add_argument("--json", action="store_true", help="print hits and timings as JSON")
    p.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    flt = parse_filter_arg(args)  # a bad --filter fails before the search stack loads
    from tansaku.retrieve import FusionConfig

    from ..api import open_index
    from ..search import default_rerank_k
    from .options import say

    retrieve_k = args.retrieve_k or max(100, args.top_n)
    with open_index(
        args.index,
        reranker=make_reranker(args),
        mode=args.mode,
        retrieve_k=retrieve_k,
        rerank_k=default_rerank_k(retrieve_k, args.rerank_k),
        top_n=args.top_n,
        fusion=FusionConfig(method=args.fusion),
        nprobe=args.nprobe,
        rerank_fusion_weight=args.rerank_fusion,
    ) as searcher:
        # eager: every hit is printed, and its fetch belongs in the timings shown
        pipeline = searcher.pipeline()
        result = pipeline.search(args.query, filter=flt)
        mode = pipeline.retriever.stage
    for warning in result.warnings:
        say(f"warning: {warning}")
    if args.json:
        emit_json({"mode": mode, **result.to_dict()})
        return 0
    if not result.hits:
        print(f"no documents match {args.query!r}" + (" and the --filter" if flt else ""))
    for hit in result.hits:
        text = " ".join((hit.text or "").split())
        snippet = text[: args.snippet] + ("…" if len(text) > args.snippet else "")
        print(f"{hit.rank:>3}. {hit.score:8.4f}  [{hit.doc_id}] {hit.title or ''}")
        print(f"     {snippet}")
    t = result.timings_ms
    print(
        f"({mode}: {result.counts['retrieved']} candidates, "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items())
        + ")",
        file=sys.stderr,
    )
    return 0


def add_rerank(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rerank",
        help="score documents against a query with a cross-encoder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score each DOC against QUERY with a cross-encoder and print them best first.",
        epilog="""examples:
  tansaku rerank --model /models/japanese-reranker-xsmall "富士山の高さ" "富士山は3776m" "東京の人口"
  tansaku rerank --model BAAI/bge-reranker-v2-m3 "query" doc1 doc2 --json
""",
    )
    p.add_argument(
        "--model",
        "--reranker",
        dest="reranker",
        required=True,
        help="cross-encoder hub id or local model directory",
    )
    p.add_argument("query", help="the query")
    p.add_argument("docs", nargs="+", help="documents to score")
    p.add_argument("--top-n", type=int, help="print only the best N")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per pair")
    p.add_argument("--rerank-batch-size", type=int, default=32, help="batch size")
    add_quantize_option(p)
    p.add_argument("--raw-scores", action="store_true", help="raw logits instead of sigmoid")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(handler=run_rerank)


def run_rerank(args: argparse.Namespace) -> int:
    reranker = make_reranker(args)
    assert reranker is not None
    from tansaku.rerank.base import rank_texts

    start = time.perf_counter()
    ranked = rank_texts(reranker, args.query, args.docs, args.top_n)
    ms = (time.perf_counter() - start) * 1000
    if args.json:
        results = [
            {"index": r.index, "relevance_score": r.score, "document": args.docs[r.index]} for r in ranked
        ]
        emit_json({"model": str(args.reranker), "query": args.query, "rerank_ms": ms, "results": results})
        return 0
    for rank, r in enumerate(ranked, 1):
        print(f"{rank:>3}. {r.score:8.4f}  [{r.index}] {args.docs[r.index]}")
    return 0

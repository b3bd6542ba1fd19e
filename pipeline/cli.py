"""The ``tansaku`` command line: build, search, ... (``tansaku COMMAND --help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tansaku.index.errors import TansakuError

Handler = Callable[[argparse.Namespace], int]


def _log(args: argparse.Namespace) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not getattr(args, "quiet", False):
            print(f"tansaku: {message}", file=sys.stderr, flush=True)
    return say


def _emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


# -- build -------------------------------------------------------------------------------------

def add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="build an index directory from JSONL/CSV/TSV documents",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Build (or rebuild) the index at INDEX from one or more document files.

Each record needs an id and a text; a title is optional; every other field is
kept as metadata. Title and text are indexed together as "title text". The
corpus is stored in INDEX/corpus.sqlite, BM25 postings in INDEX/bm25/, FAISS in
INDEX/dense/ and what was built, with which versions, in INDEX/manifest.json.

The build writes into a temporary directory beside INDEX and swaps it in only
when complete: if it fails or is interrupted, the previous index stays intact.
Bad input stops the build with the file, line and field at fault.""",
        epilog="""\
examples:
  tansaku build my-index docs.jsonl
  tansaku build my-index --sample                      # the shipped 56-document sample
  tansaku build my-index faq.csv --id-field qid --text-field answer --title-field question
  tansaku build my-index docs.jsonl --encoder /models/multilingual-e5-small \\
      --query-prefix "query: " --document-prefix "passage: "
""")
    p.add_argument("index", type=Path, help="index directory to create or replace")
    p.add_argument("inputs", nargs="*", type=Path,
                   help="document files: .jsonl/.ndjson, .csv, .tsv (optionally .gz)")
    p.add_argument("--sample", action="store_true",
                   help="index the sample corpus shipped with tansaku (50 Japanese + 6 English docs)")
    g = p.add_argument_group("input")
    g.add_argument("--format", choices=["jsonl", "csv", "tsv"],
                   help="input format (default: from each file's extension)")
    g.add_argument("--id-field", default="id", help="field holding the document id (default: id)")
    g.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    g.add_argument("--title-field", default="title",
                   help="field holding the title (default: title; '' for none)")
    g = p.add_argument_group("analysis and BM25")
    g.add_argument("--analyzer", default="ja", choices=["ja", "words"],
                   help="ja: MeCab (fugashi+unidic-lite) surface forms; words: regex \\w+ words "
                        "for space-delimited languages. Both NFKC-normalise and lowercase. "
                        "(default: ja)")
    g.add_argument("--k1", type=float, default=1.5, help="BM25 k1 (default: 1.5)")
    g.add_argument("--b", type=float, default=0.75, help="BM25 b (default: 0.75)")
    g.add_argument("--bm25-dtype", default="float64", choices=["float64", "float32"],
                   help="weight storage: float64 is exact vs rank-bm25, float32 half the size")
    g = p.add_argument_group("dense index")
    g.add_argument("--encoder", default="none",
                   help="sentence-transformers model (hub id or local directory) for the dense "
                        "index, or 'none' for BM25 only (default: none)")
    g.add_argument("--query-prefix", default="", help="prepended to queries (e5: 'query: ')")
    g.add_argument("--document-prefix", default="",
                   help="prepended to documents (e5: 'passage: ')")
    g.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: 64)")
    g.add_argument("--faiss", default="auto", choices=["auto", "flat", "ivfpq"],
                   help="auto: exact Flat below ~10k documents (too few to train PQ), IVFPQ above")
    g.add_argument("--nlist", type=int, help="IVF lists (default: ~4*sqrt(n))")
    g.add_argument("--pq-m", type=int, help="PQ sub-quantizers, must divide the dimension "
                                           "(default: dim/4)")
    g.add_argument("--nbits", type=int, default=8, help="bits per PQ code (default: 8)")
    g.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query (default: 16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.set_defaults(handler=run_build)


def run_build(args: argparse.Namespace) -> int:
    from itertools import chain

    from tansaku.index import (BM25Params, BuildConfig, FaissParams, FieldMap, build_index,
                               read_file)
    from tansaku.index.sample import SAMPLE_CORPUS

    inputs = list(args.inputs) + ([SAMPLE_CORPUS] if args.sample else [])
    if not inputs:
        raise TansakuError("nothing to index: give document files or --sample")
    fields = FieldMap(id=args.id_field, text=args.text_field, title=args.title_field or None)
    config = BuildConfig(
        analyzer=args.analyzer,
        bm25=BM25Params(k1=args.k1, b=args.b, dtype=args.bm25_dtype),
        encoder=None if args.encoder.lower() == "none" else args.encoder,
        query_prefix=args.query_prefix, document_prefix=args.document_prefix,
        faiss=FaissParams(kind=args.faiss, nlist=args.nlist, m=args.pq_m, nbits=args.nbits,
                          nprobe=args.nprobe),
        encode_batch_size=args.batch_size,
    )
    say = _log(args)
    start = time.perf_counter()
    records = chain.from_iterable(read_file(path, fields, args.format) for path in inputs)
    index = build_index(args.index, records, config, progress=not args.quiet, log=say)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(index.path).rglob("*") if f.is_file())
    summary = {"index": str(index.path), "docs": len(index), "seconds": round(seconds, 3),
               "bytes": size, "bm25": index.manifest["bm25"], "dense": index.manifest["dense"]}
    if args.json:
        _emit_json(summary)
    else:
        dense = index.dense.params.kind if index.dense else "none"
        print(f"built {index.path}: {len(index):,} documents, {index.bm25.n_postings:,} postings, "
              f"dense={dense}, {size / 1e6:.1f} MB in {seconds:.1f} s")
    index.close()
    return 0


# -- search ------------------------------------------------------------------------------------

def add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search an index and print ranked hits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Search INDEX for QUERY. The first stage (bm25, dense or hybrid) retrieves
--retrieve-k candidates; with --reranker a cross-encoder reorders the best
--rerank-k of them; the best --top-n are printed with titles and snippets.""",
        epilog="""\
examples:
  tansaku search my-index "富士山の高さ"
  tansaku search my-index "検索エンジンの仕組み" -k 100 --mode bm25 --json
""")
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("query", help="the query text")
    p.add_argument("-k", "--top-n", dest="top_n", type=int, default=10,
                   help="number of hits to print (default: 10)")
    p.add_argument("--mode", choices=["bm25", "dense", "hybrid"],
                   help="first stage (default: hybrid if the index has a dense part, else bm25)")
    p.add_argument("--retrieve-k", type=int,
                   help="first-stage candidates (default: max(100, top-n))")
    p.add_argument("--fusion", choices=["rrf", "score"], default="rrf",
                   help="hybrid fusion: reciprocal rank (k=60) or normalised score sum")
    p.add_argument("--nprobe", type=int, help="IVF lists searched (IVFPQ indexes)")
    p.add_argument("--snippet", type=int, default=80, help="snippet length in characters")
    p.add_argument("--json", action="store_true", help="print hits and timings as JSON")
    p.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    from tansaku.retrieve import FusionConfig

    from .api import open_index

    retrieve_k = args.retrieve_k or max(100, args.top_n)
    with open_index(args.index, mode=args.mode, retrieve_k=retrieve_k,
                    rerank_k=min(100, retrieve_k), top_n=args.top_n,
                    fusion=FusionConfig(method=args.fusion), nprobe=args.nprobe) as searcher:
        result = searcher.search(args.query)
        mode = searcher.pipeline().retriever.stage
    if args.json:
        _emit_json({"mode": mode, **result.to_dict()})
        return 0
    if not result.hits:
        print(f"no documents match {args.query!r}")
    for hit in result.hits:
        text = " ".join((hit.text or "").split())
        snippet = text[:args.snippet] + ("…" if len(text) > args.snippet else "")
        print(f"{hit.rank:>3}. {hit.score:8.4f}  [{hit.doc_id}] {hit.title or ''}")
        print(f"     {snippet}")
    t = result.timings_ms
    print(f"({mode}: {result.counts['retrieved']} candidates, "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items()) + ")", file=sys.stderr)
    return 0


# -- entry point -------------------------------------------------------------------------------

COMMANDS = (add_build, add_search)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tansaku",
        description="tansaku (探索): Japanese-first retrieve-and-rerank search. "
                    "Run `tansaku COMMAND --help` for each command.")
    from tansaku import __version__

    parser.add_argument("--version", action="version", version=f"tansaku {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except TansakuError as exc:
        print(f"tansaku: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tansaku: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `tansaku search ... | head`: the reader went away; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

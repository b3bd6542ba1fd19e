"""What several commands share: messages, JSON output, input/filter/rerank options, the reranker.

Imports nothing heavy (only argparse and the standard library) so that ``tansaku --help``
stays fast; what an option needs is imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tansaku.rerank.cross_encoder import CrossEncoderReranker


def say(message: str) -> None:
    """Print a ``tansaku: MESSAGE`` line on stderr (progress, warnings and errors)."""
    print(f"tansaku: {message}", file=sys.stderr, flush=True)


def logger(args: argparse.Namespace) -> Callable[[str], None]:
    """:func:`say`, or nothing with ``--quiet``."""
    return _silent if getattr(args, "quiet", False) else say


def _silent(_message: str) -> None:
    pass


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (non-ASCII text kept as is)."""
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def add_input_options(p: argparse.ArgumentParser) -> None:
    """How document files are read (``build`` and ``add``): format, field names, size limit."""
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
    g.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of the input files (default: utf-8, a BOM allowed); cp932 reads "
        "Excel's Shift-JIS CSV",
    )


def field_map(args: argparse.Namespace) -> Any:
    """The FieldMap the input options ask for."""
    from tansaku.index import FieldMap

    return FieldMap(
        id=args.id_field, text=args.text_field, title=args.title_field or None, max_chars=args.max_chars
    )


def read_inputs(args: argparse.Namespace, paths: Sequence[Path]) -> Any:
    """Validated records of every input file, in order (lazily)."""
    from itertools import chain

    from tansaku.index import read_file

    fields = field_map(args)
    return chain.from_iterable(read_file(path, fields, args.format, args.encoding) for path in paths)


FILTER_HELP = (
    "only documents whose metadata match this JSON filter, applied before every stage's "
    'top-k: equality {"lang": "ja"}; $eq $ne $gt $gte $lt $lte, e.g. '
    '{"year": {"$gte": 2020}}; $in/$nin with a list; {"note": {"$exists": true}}; $and/$or '
    "(lists of filters) and $not; on list fields any element may match. Fewer hits come back "
    "when fewer documents match."
)


def add_filter_option(p: argparse.ArgumentParser) -> None:
    """``--filter JSON``: a metadata filter (``search`` and ``eval``)."""
    p.add_argument("--filter", metavar="JSON", help=FILTER_HELP)


def parse_filter_arg(args: argparse.Namespace) -> Any:
    """The parsed --filter (None without one); bad JSON or operators fail before any work."""
    from tansaku.index.filters import parse_filter

    return parse_filter(args.filter) if getattr(args, "filter", None) is not None else None


def add_rerank_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """The reranking group of ``search`` and ``eval``: model, k, window, batch, fusion, scores."""
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
    """``--quantize``: the faster int8 CPU path for the reranker (also used by ``rerank`` and ``serve``)."""
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


def make_reranker(
    args: argparse.Namespace, log: Callable[[str], None] | None = None
) -> CrossEncoderReranker | None:
    """The CrossEncoderReranker a command's reranking options ask for (None: no --reranker or 'none').

    Sigmoid scores unless ``--raw-scores``; ``--max-chunks-per-doc`` where the command has it
    (``serve``), else the reranker's default. ``log`` hears which model is being loaded.
    """
    spec = getattr(args, "reranker", None)
    if not spec or spec.lower() == "none":
        return None
    from tansaku.rerank import CrossEncoderReranker

    if log is not None:
        log(f"loading reranker {spec}")

    return CrossEncoderReranker(spec, **reranker_options(args))


def reranker_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CrossEncoderReranker keywords of a command's reranking options."""
    windows = getattr(args, "max_chunks_per_doc", None)
    return {
        "max_length": args.max_length,
        "batch_size": args.rerank_batch_size,
        "quantize": args.quantize,
        "activation": "none" if getattr(args, "raw_scores", False) else "sigmoid",
        **({} if windows is None else {"max_chunks_per_doc": windows}),
    }


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """An argparse type: ``8G``, ``512M``, ``1.5G`` or plain bytes (binary units, B optional)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8G, 512M)") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return int(number * _UNITS[unit])

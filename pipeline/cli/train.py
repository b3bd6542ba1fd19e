"""The ``tansaku train-reranker`` command (arguments and output; the work is in train.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .options import emit_json, logger

DESCRIPTION = """\
Fine-tune a cross-encoder reranker from --base on your own (query, relevant document)
pairs, with hard negatives mined by tansaku's first stage over --index: for each query
the best-ranked documents of hybrid (or BM25) search that are not its positives.

--train: JSONL, one pair a line, ids being INDEX's document ids:
    {"query": "富士山の高さは？", "positive": "doc-17"}
    {"query": "...", "positive": ["doc-3", "doc-9"], "id": "q2"}
  or a JSQuAD/SQuAD .json file (--train-format jsquad) for an index built from
  tansaku.pipeline.eval.datasets.load_jsquad(FILE).corpus.

--base: a model directory (e.g. `tansaku models import e5-small --out e5-small`, or a
directory copied from `hf download ...`) or, online, a hub id. BERT-like encoders get a
one-logit classification head on the pooled [CLS] output.

OUT becomes a normal cross-encoder directory (config.json, model.safetensors,
tokenizer, tansaku_reranker.json recording base, data, parameters, seed and time):
use it with `tansaku search INDEX QUERY --reranker OUT` or
sentence_transformers.CrossEncoder(OUT). A --holdout fraction of the queries is not
trained on; the first-stage/reranker fusion weight with the best nDCG@10 on them is
recorded in the manifest as the search default (searches use it unless --rerank-fusion
says otherwise) only when it beat the first stage by a margin the held-out queries can
resolve: at least 20 held-out queries, a higher mean nDCG@10 than the first stage
alone, and more queries improved than worsened by a one-sided exact sign test at the
0.025 level. Otherwise the default recorded is 0 (searches keep the first stage's
order) and the command says why.

Progress is shown from the start (mining, loading and preparing the base, training,
the held-out sweep). Warnings (shown even with -q) say when the held-out queries are
too few to choose a weight, and when the loss did not fall: the mean loss of the
last quarter of the steps (at most 50) must be at least 5 % below that of the first.

Checkpoints (trainable weights, AdamW state and RNG state as safetensors + JSON, no
pickle) go to OUT/checkpoints every --checkpoint-every steps; --resume continues the
newest one and ends with the same weights as an uninterrupted run. The same --seed
gives the same model."""

EPILOG = """\
examples:
  tansaku models import e5-small --out e5-small
  tansaku train-reranker --base e5-small --train pairs.jsonl --index my-index --out my-reranker
  tansaku train-reranker ... --pause-after 200      # stop and checkpoint; later:
  tansaku train-reranker ... --resume
  tansaku search my-index "質問" --reranker my-reranker
"""


def add_train_reranker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-reranker",
        help="fine-tune a cross-encoder reranker on your own pairs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base",
        required=True,
        help="base model: a directory (e.g. from `tansaku models import e5-small`) or, online, a hub id",
    )
    p.add_argument(
        "--train",
        required=True,
        type=Path,
        action="append",
        help="training pairs (JSONL, or a JSQuAD .json); may be given more than once",
    )
    p.add_argument(
        "--train-format",
        choices=["auto", "pairs", "jsquad"],
        default="auto",
        help="auto: .json files are JSQuAD, everything else JSONL pairs",
    )
    p.add_argument(
        "--index",
        required=True,
        type=Path,
        help="the index the positives' ids refer to; negatives are mined in it",
    )
    p.add_argument("--out", required=True, type=Path, help="directory for the trained reranker")
    g = p.add_argument_group("hard negatives")
    g.add_argument(
        "--mode",
        choices=["bm25", "dense", "hybrid"],
        help="first stage that mines them (default: hybrid if INDEX has a dense part, else bm25)",
    )
    g.add_argument(
        "--depth", type=int, default=30, help="look at this many first-stage hits per query (default: 30)"
    )
    g.add_argument(
        "--negatives", type=int, default=7, help="hard negatives per query, best-ranked first (default: 7)"
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--loss",
        choices=["listwise", "bce"],
        default="listwise",
        help="listwise: softmax over 1 positive + n negatives (default); bce: binary cross-entropy per pair",
    )
    g.add_argument("--epochs", type=int, default=1, help="passes over the pairs (default: 1)")
    g.add_argument("--lr", type=float, default=3e-5, help="peak AdamW learning rate (default: 3e-5)")
    g.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="fraction of steps of linear warm-up, then linear decay (default: 0.1)",
    )
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens per (query, document) pair; longer documents keep their start (default: 256)",
    )
    g.add_argument(
        "--queries-per-step", type=int, default=1, help="query groups per optimizer step (default: 1)"
    )
    g.add_argument("--max-steps", type=int, help="stop the schedule after this many steps")
    g.add_argument("--seed", type=int, default=0, help="seed for init, order, dropout, holdout")
    g.add_argument(
        "--train-embeddings",
        action="store_true",
        help="also train the word embeddings (frozen by default: on CPU they are most "
        "of the weights and of the optimizer's memory)",
    )
    g.add_argument(
        "--freeze-layers",
        type=int,
        default=0,
        help="also freeze the lowest N encoder layers (faster steps; default: 0)",
    )
    g.add_argument(
        "--layers",
        type=int,
        help="keep only the base's lowest N encoder layers: a shallower model, faster "
        "to train and to serve (default: all)",
    )
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g = p.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="steps between checkpoints (default: 100; 0: only when pausing)",
    )
    g.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every checkpoint (default: only the newest; removed when done)",
    )
    g.add_argument(
        "--pause-after",
        type=int,
        metavar="STEPS",
        help="stop after this many steps in total, with a checkpoint to --resume from",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest checkpoint in OUT (same arguments as the first run)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an earlier result in OUT")
    g = p.add_argument_group("fusion weight")
    g.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="fraction of the queries held out of training to choose the "
        "first-stage/reranker fusion weight on (default: 0.1; 0: none, and weight 0 "
        "is recorded); at least 20 held-out queries are needed to record any other weight",
    )
    g.add_argument(
        "--rerank-k",
        type=int,
        default=30,
        help="first-stage candidates reranked for that choice (default: 30)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or messages (warnings are still shown)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run_train_reranker)


def run_train_reranker(args: argparse.Namespace) -> int:
    from tansaku.rerank.training import TrainConfig

    from ..train import MiningConfig, load_training_data, train_reranker
    from .options import say

    pairs = [pair for path in args.train for pair in load_training_data(path, args.train_format)]
    config = TrainConfig(
        loss=args.loss,
        epochs=args.epochs,
        learning_rate=args.lr,
        warmup_ratio=args.warmup,
        weight_decay=args.weight_decay,
        max_length=args.max_length,
        queries_per_step=args.queries_per_step,
        seed=args.seed,
        train_embeddings=args.train_embeddings,
        freeze_layers=args.freeze_layers,
        layers=args.layers,
        max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        threads=args.threads,
    )
    mining = MiningConfig(mode=args.mode, depth=args.depth, negatives=args.negatives, seed=args.seed)
    result, fusion = train_reranker(
        args.base,
        pairs,
        args.index,
        args.out,
        config,
        mining,
        holdout=args.holdout,
        rerank_k=args.rerank_k,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_after=args.pause_after,
        data_sources=[str(p) for p in args.train],
        progress=not args.quiet,
        log=_with_warnings(logger(args), say),
    )
    if args.json:
        emit_json({**result.to_dict(), "fusion": fusion})
    elif result.completed:
        weight = f"; fusion weight {fusion['weight']:g} by default" if fusion else ""
        print(
            f"trained {args.out}: {result.steps} steps in {result.seconds:.0f} s{weight}; use it "
            f"with --reranker {args.out}"
        )
    else:
        print(
            f"paused at step {result.steps}/{result.total_steps}: {result.checkpoint}; continue with --resume"
        )
    return 0


def _with_warnings(log: Callable[[str], None], warn: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, except that ``warning: ...`` lines always go to ``warn`` (--quiet hides progress,
    not what may be wrong with the model)."""
    return lambda message: (warn if message.startswith("warning:") else log)(message)

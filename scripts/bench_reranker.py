#!/usr/bin/env python3
"""Train tansaku's own reranker on JSQuAD and measure it against the first stages.

JSQuAD valid (1,145 paragraphs, 4,442 questions) is split by article, deterministically
(articles sorted by title; every 5th is an evaluation article, ~20 %; no article in two
parts). Of the training articles every 10th is held out ("tune") to choose the
first-stage/reranker fusion weight; the rest give the training queries. The evaluation
articles are only ever scored.

Steps (each cached in --workdir, so a rerun only redoes what changed):
  1. a hybrid index over all paragraphs (BM25 + the bundled e5-small; ~3-5 min to encode)
  2. BM25 and hybrid top-100 for the tune and evaluation queries
  3. hard negatives for --train-queries training queries: the --mine first stage's (hybrid or
     BM25) top --depth minus the positive
  4. `tansaku models import e5-small`, then training (the time is measured and printed)
  5. reranking the BM25 and the hybrid top --rerank-k of tune and evaluation queries (their
     union, once: a cross-encoder scores every pair on its own)
  6. for each first stage, pure reranker order and the fusion with that first stage's scores,
     the fusion weight chosen by nDCG@10 on tune; the table for the evaluation articles

Sizes: the full run trains on --train-queries 600 groups of 1 positive + 7 negatives
(max_length 256, 1 epoch) and reranks the top 20 of 300 tune and all ~880 evaluation
queries; on 2 busy CPU cores that is roughly 40 min of training and 40-60 min of
reranking. --quick: 40 training queries (a few minutes), 40 tune and 80 evaluation queries;
the numbers then only show that everything runs.

Examples:
  python scripts/bench_reranker.py --quick
  nohup python scripts/bench_reranker.py --threads 2 > bench.log 2>&1 &
  python scripts/bench_reranker.py --model /models/my-reranker   # evaluate an existing one
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import format_table

import tansaku
from tansaku.index import BuildConfig, Hit, Index, build_index, read_dicts
from tansaku.index.analyzer import get_analyzer
from tansaku.pipeline.eval.datasets import RetrievalDataset, load_jsquad
from tansaku.pipeline.eval.fusion_tuning import (
    best_weight,
    fusion_record,
    sweep_fusion_weights,
    sweep_per_query,
)
from tansaku.pipeline.eval.metrics import evaluate
from tansaku.pipeline.rerank_fusion import fuse
from tansaku.pipeline.train import (
    MiningConfig,
    first_stage,
    jsquad_pairs,
    mine_hard_negatives,
    rerank_lists,
)
from tansaku.rerank.training import (
    TrainConfig,
    latest_checkpoint,
    read_examples,
    read_manifest,
    train_cross_encoder,
    write_examples,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent
METRICS = ("ndcg@10", "mrr@10", "recall@10")


def split_articles(ds: RetrievalDataset) -> dict[str, list[str]]:
    """Query ids of the train / tune / eval articles (sorted titles: every 5th is eval,
    every 10th of the rest is tune)."""
    articles = sorted(set(ds.groups.values()))
    eval_articles = set(articles[2::5])
    rest = [a for a in articles if a not in eval_articles]
    tune_articles = set(rest[5::10])
    parts: dict[str, list[str]] = {"train": [], "tune": [], "eval": []}
    for qid, rels in ds.qrels.items():
        article = ds.groups[next(iter(rels))]
        part = "eval" if article in eval_articles else "tune" if article in tune_articles else "train"
        parts[part].append(qid)
    return parts


def sample(qids: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or n >= len(qids):
        return qids
    keep = set(np.random.default_rng(seed).permutation(len(qids))[:n].tolist())
    return [q for i, q in enumerate(qids) if i in keep]


def cached_lists(path: Path, compute: Any) -> dict[str, list[Hit]]:
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {q: [Hit(d, s, r, st) for d, s, r, st in hits] for q, hits in data.items()}
    lists = compute()
    path.write_text(
        json.dumps({q: [[h.doc_id, h.score, h.rank, h.stage] for h in hits] for q, hits in lists.items()}),
        encoding="utf-8",
    )
    return lists


def union_head(lists: list[list[Hit]], k: int) -> list[Hit]:
    """The top ``k`` of every list, each document once, in first-seen order."""
    seen: dict[str, Hit] = {}
    for hits in lists:
        for h in hits[:k]:
            seen.setdefault(h.doc_id, h)
    return list(seen.values())


def restrict(reranked: list[Hit], head: list[Hit]) -> list[Hit]:
    """The reranked hits of the documents in ``head``, re-ranked among themselves."""
    ids = {h.doc_id for h in head}
    kept = [h for h in reranked if h.doc_id in ids]
    return [h.replace(rank=r) for r, h in enumerate(kept, 1)]


def key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def scores(ds: RetrievalDataset, lists: dict[str, list[Hit]], qids: list[str]) -> dict[str, float]:
    run = {q: {h.doc_id: h.score for h in lists[q]} for q in qids}
    return evaluate({q: ds.qrels[q] for q in qids}, run, METRICS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jsquad", type=Path, default=REPO.parent / "shared/data/jsquad/valid-v1.3.json")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/tansaku-bench-reranker"),
        help="index, caches and trained models (default: /tmp/tansaku-bench-reranker)",
    )
    p.add_argument("--model", help="evaluate this reranker directory instead of training one")
    p.add_argument("--base", help="base model directory (default: e5-small imported into WORKDIR)")
    p.add_argument(
        "--train-queries",
        type=int,
        default=600,
        help="training queries, sampled from the training articles (default: 600)",
    )
    p.add_argument(
        "--tune-queries",
        type=int,
        default=300,
        help="held-out queries the fusion weight is chosen on (default: 300)",
    )
    p.add_argument("--eval-queries", type=int, help="cap on evaluation queries (default: all)")
    p.add_argument(
        "--mine",
        choices=["bm25", "hybrid"],
        default="hybrid",
        help="first stage the hard negatives come from (default: hybrid)",
    )
    p.add_argument("--depth", type=int, default=30, help="mining depth (first-stage top-k; default: 30)")
    p.add_argument("--negatives", type=int, default=7, help="hard negatives per query (default: 7)")
    p.add_argument("--loss", choices=["listwise", "bce"], default="listwise")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (default: 3e-5)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction (default: 0.1)")
    p.add_argument("--max-length", type=int, default=256, help="training tokens per pair (default: 256)")
    p.add_argument("--queries-per-step", type=int, default=1, help="groups per optimizer step")
    p.add_argument("--freeze-layers", type=int, default=0, help="lowest encoder layers kept frozen")
    p.add_argument(
        "--layers", type=int, help="keep only the base's lowest N encoder layers (faster; default: all)"
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rerank-k", type=int, default=20, help="hybrid candidates reranked per query (default: 20)"
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--tag", default="", help="suffix for the trained model's directory name")
    p.add_argument("--quick", action="store_true", help="tiny sizes: only shows that it all runs")
    p.add_argument("--json", action="store_true", help="also print everything as JSON")
    args = p.parse_args(argv)
    if not args.jsquad.exists():
        p.error(f"JSQuAD file not found: {args.jsquad}")
    if args.quick:
        args.train_queries, args.tune_queries = 40, 40
        args.eval_queries = args.eval_queries or 80
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(f"[bench_reranker] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    ds = load_jsquad(args.jsquad)
    parts = split_articles(ds)
    train_q = sample(parts["train"], args.train_queries, args.seed)
    tune_q = sample(parts["tune"], args.tune_queries, args.seed)
    eval_q = sample(parts["eval"], args.eval_queries, args.seed)
    n_articles = {k: len({ds.groups[next(iter(ds.qrels[q]))] for q in v}) for k, v in parts.items()}
    say(
        f"articles train/tune/eval {n_articles['train']}/{n_articles['tune']}/{n_articles['eval']}; "
        f"queries {len(parts['train'])}/{len(parts['tune'])}/{len(parts['eval'])}; "
        f"using {len(train_q)}/{len(tune_q)}/{len(eval_q)}"
    )

    # 1. the hybrid index (BM25 + e5-small)
    # named by the build defaults, so a change of default analyzer or BM25 parameters rebuilds
    build_config = BuildConfig(encoder="e5-small")
    analyzer = get_analyzer(build_config.analyzer).to_config()
    index_dir = work / f"index-e5-{key(build_config, analyzer, tansaku.__version__)}"
    if not (index_dir / "manifest.json").is_file():
        t0 = time.perf_counter()
        build_index(index_dir, read_dicts(ds.corpus), build_config, progress=True)
        say(f"built {index_dir} in {time.perf_counter() - t0:.0f} s")
    index = Index.open(index_dir)
    stamp_index = index.manifest.created_at  # caches below are per index build

    # 2. first stages for tune + eval queries
    scored_q = tune_q + eval_q
    texts = [ds.queries[q] for q in scored_q]
    runs = {}
    for mode in ("bm25", "hybrid"):
        runs[mode] = cached_lists(
            work / f"run-{mode}-{key(scored_q, stamp_index)}.json",
            lambda mode=mode: dict(
                zip(scored_q, first_stage(index, texts, mode, 100, desc=mode), strict=True)
            ),
        )

    # 3 + 4. negatives and training
    mining_name = {"bm25": "BM25", "hybrid": "hybrid (BM25 + e5-small)"}
    if args.model:
        model_dir = Path(args.model)
    else:
        mining = MiningConfig(mode=args.mine, depth=args.depth, negatives=args.negatives, seed=args.seed)
        ex_file = work / f"examples-{key(train_q, mining, stamp_index)}.jsonl"
        if ex_file.is_file():
            examples = read_examples(ex_file)
        else:
            t0 = time.perf_counter()
            examples = mine_hard_negatives(index, jsquad_pairs(ds, train_q), mining)
            write_examples(ex_file, examples)
            say(f"mined negatives for {len(examples)} queries in {time.perf_counter() - t0:.0f} s")
        base = args.base
        if base is None:
            base = str(work / "e5-small")
            if not (Path(base) / "config.json").is_file():
                from tansaku.index.encoders.e5_import import import_e5_small

                import_e5_small(base, overwrite=True)
        config = TrainConfig(
            loss=args.loss,
            epochs=args.epochs,
            learning_rate=args.lr,
            warmup_ratio=args.warmup,
            max_length=args.max_length,
            queries_per_step=args.queries_per_step,
            seed=args.seed,
            freeze_layers=args.freeze_layers,
            layers=args.layers,
            checkpoint_every=args.checkpoint_every,
        )
        model_dir = work / f"reranker-{key(str(ex_file.name), config.to_dict())}{args.tag}"
        if not (model_dir / "tansaku_reranker.json").is_file():
            resume = latest_checkpoint(model_dir) is not None
            train_cross_encoder(
                base,
                None if resume else examples,
                model_dir,
                config,
                resume=resume,
                overwrite=not resume,
                provenance={
                    "dataset": "JSQuAD valid-v1.3",
                    "train_queries": len(train_q),
                    "mining": f"{mining_name[args.mine]} top-{args.depth} minus the positive",
                },
                log=say,
            )
    manifest = read_manifest(model_dir) or {}

    # 5. rerank tune + eval (cached per model): the union of the BM25 and hybrid heads, once;
    # a cross-encoder scores each pair alone, so each first stage's list is a subset of it
    from tansaku.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(model_dir)
    stamp = key(str(model_dir.resolve()), manifest.get("finished_at"), args.rerank_k, scored_q, "union")
    cache = work / f"rerank-{stamp}.json"
    heads = {q: union_head([runs["bm25"][q], runs["hybrid"][q]], args.rerank_k) for q in scored_q}

    def rerank_all() -> dict[str, list[Hit]]:
        t0 = time.perf_counter()
        # two top-k heads: at most 2k documents, all of them reranked
        lists = rerank_lists(index, reranker, texts, [heads[q] for q in scored_q], 2 * args.rerank_k)
        n_pairs = sum(len(heads[q]) for q in scored_q)
        say(
            f"reranked {len(scored_q)} queries ({n_pairs} pairs: the BM25 and hybrid top-{args.rerank_k} "
            f"together) in {time.perf_counter() - t0:.0f} s"
        )
        return dict(zip(scored_q, lists, strict=True))

    rerank_start = time.perf_counter()
    union = cached_lists(cache, rerank_all)
    rerank_seconds = time.perf_counter() - rerank_start

    # 6. per first stage: the fusion weight with the best nDCG@10 on tune; the table on eval
    tune_qrels = {q: ds.qrels[q] for q in tune_q}
    systems = [("bm25", runs["bm25"]), ("hybrid (bm25 + e5-small, default)", runs["hybrid"])]
    sweeps: dict[str, dict[float, float]] = {}
    weights: dict[str, float] = {}
    for stage in ("bm25", "hybrid"):
        reranked = {q: restrict(union[q], runs[stage][q][: args.rerank_k]) for q in scored_q}
        sweeps[stage] = sweep_fusion_weights(runs[stage], reranked, tune_qrels)
        weights[stage] = w = best_weight(sweeps[stage])
        fused = {q: fuse(runs[stage][q], reranked[q], w) for q in scored_q}
        systems += [
            (f"{stage} top-{args.rerank_k} -> reranker (pure, w=1)", reranked),
            (f"{stage} top-{args.rerank_k} -> reranker fused w={w:g}", fused),
        ]
    # the partner whose fused pipeline is best on tune is what the model recommends
    best_stage = max(sweeps, key=lambda st: (round(sweeps[st][weights[st]], 10), st == "bm25"))
    if "fusion" not in manifest and not args.model:
        # recorded by the rule train-reranker applies: a default only when the tune queries
        # resolve the margin over the first stage (else 0)
        reranked = {q: restrict(union[q], runs[best_stage][q][: args.rerank_k]) for q in scored_q}
        per_query = sweep_per_query(runs[best_stage], reranked, tune_qrels)
        manifest["fusion"] = fusion_record(
            per_query,
            first_stage=best_stage,
            rerank_k=args.rerank_k,
            chosen_on="JSQuAD tune articles (held out of training; not evaluation)",
        )
        write_manifest(model_dir, manifest)
    rows, out = [], []
    for name, lists in systems:
        ev, tu = scores(ds, lists, eval_q), scores(ds, lists, tune_q)
        out.append({"system": name, "eval": ev, "tune": tu})
        rows.append([name, *(f"{ev[m]:.4f}" for m in METRICS), f"{tu['ndcg@10']:.4f}"])
    headers = ["system", *(f"eval {m}" for m in METRICS), "tune ndcg@10"]
    print(
        f"JSQuAD valid-v1.3 split by article: evaluation = {n_articles['eval']} articles, "
        f"{len(eval_q)} questions; fusion weights chosen on {len(tune_q)} questions of "
        f"{n_articles['tune']} held-out training articles"
    )
    print(format_table(headers, rows))
    for stage, sweep in sweeps.items():
        print(
            f"fusion weight sweep with {stage} (tune nDCG@10): "
            + ", ".join(f"{w:g}: {v:.4f}" for w, v in sweep.items())
        )
    print(
        f"recommended (best on tune): {best_stage} top-{args.rerank_k} -> reranker fused "
        f"w={weights[best_stage]:g}"
    )
    params = manifest.get("params", {})
    if manifest.get("train_seconds") is not None:
        print(
            f"training: {manifest.get('examples')} queries x (1 positive + "
            f"{manifest.get('negatives_per_query', {}).get('max')} hard negatives), "
            f"{params.get('loss')} loss, {manifest.get('steps')} steps, lr {params.get('learning_rate')}, "
            f"max_length {params.get('max_length')}, frozen word embeddings: "
            f"{not params.get('train_embeddings')}, seed {params.get('seed')}: "
            f"{manifest['train_seconds']:.0f} s on this CPU ({manifest.get('threads')} torch threads)"
        )
    print(
        f"reranking {len(scored_q)} queries x top {args.rerank_k}: {rerank_seconds:.0f} s "
        f"(0 when cached); model {model_dir}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "systems": out,
                    "fusion": {st: sw for st, sw in sweeps.items()},
                    "weights": weights,
                    "recommended": best_stage,
                    "manifest": manifest,
                },
                ensure_ascii=False,
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tansaku train-reranker``: training pairs in, hard negatives from tansaku's own first stage,
a cross-encoder out, and the first-stage/reranker fusion weight chosen on held-out queries.

The training loop itself is :mod:`tansaku.rerank.training`; this module supplies what needs
an index: the documents' texts and the negatives the first stage ranks highest without
being relevant (the mistakes a reranker exists to fix).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tansaku.index import Index
from tansaku.index.checks import check_int
from tansaku.index.errors import ConfigError, IngestError
from tansaku.index.hit import Hit
from tansaku.rerank.base import Reranker
from tansaku.rerank.training import (
    TrainConfig,
    TrainExample,
    TrainResult,
    latest_checkpoint,
    read_manifest,
    train_cross_encoder,
    write_manifest,
)
from tansaku.retrieve import MODES, make_retriever

from .eval.datasets import RetrievalDataset, load_jsquad
from .eval.fusion_tuning import (
    DEFAULT_GRID,
    MIN_HELD_OUT_QUERIES,
    RULE,
    fusion_record,
    sweep_per_query,
)


@dataclass(frozen=True)
class TrainingPair:
    """A query and the ids (in the index) of the documents relevant to it."""

    query: str
    positives: tuple[str, ...]
    qid: str


# -------------------------------------------------------------------------------- data


def read_pairs(path: str | os.PathLike[str]) -> list[TrainingPair]:
    """JSONL lines ``{"query": ..., "positive": id or [ids]}`` (an optional ``"id"`` names the query)."""
    path = Path(path)
    pairs: list[TrainingPair] = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise IngestError(f"cannot read training pairs: {exc}", source=str(path)) from exc
    with fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise IngestError(f"invalid JSON ({exc})", source=str(path), line=line_no) from None
            if not isinstance(record, dict):
                raise IngestError("expected a JSON object", source=str(path), line=line_no)
            query = record.get("query")
            if not isinstance(query, str) or not query.strip():
                raise IngestError("missing or empty query", source=str(path), line=line_no, field="query")
            positive = record.get("positive")
            ids = [positive] if isinstance(positive, (str, int)) else positive
            if (
                not isinstance(ids, list)
                or not ids
                or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids)
            ):
                raise IngestError(
                    "expected a document id or a non-empty list of ids",
                    source=str(path),
                    line=line_no,
                    field="positive",
                )
            qid = str(record.get("id", f"{path.name}:{line_no}"))
            pairs.append(TrainingPair(query, tuple(dict.fromkeys(str(i) for i in ids)), qid))
    if not pairs:
        raise IngestError("no training pairs in the file", source=str(path))
    return pairs


def jsquad_pairs(ds: RetrievalDataset, qids: Sequence[str] | None = None) -> list[TrainingPair]:
    """Training pairs from a retrieval dataset (e.g. :func:`load_jsquad`): question -> paragraph."""
    chosen = list(ds.queries) if qids is None else list(qids)
    return [
        TrainingPair(ds.queries[q], tuple(d for d, rel in ds.qrels[q].items() if rel > 0), q)
        for q in chosen
        if q in ds.qrels
    ]


def load_training_data(path: str | os.PathLike[str], fmt: str = "auto") -> list[TrainingPair]:
    """Pairs from a JSONL pairs file or (``fmt="jsquad"``, or a ``.json`` file) a JSQuAD file.

    JSQuAD positives are the paragraph ids :func:`load_jsquad` assigns (``jsquad-00000``...),
    i.e. those of an index built from ``load_jsquad(path).corpus``.
    """
    if fmt not in ("auto", "pairs", "jsquad"):
        raise ConfigError(f"training data format must be auto, pairs or jsquad, got {fmt!r}")
    if fmt == "jsquad" or (fmt == "auto" and Path(path).suffix.lower() == ".json"):
        return jsquad_pairs(load_jsquad(path))
    return read_pairs(path)


def split_holdout(
    pairs: Sequence[TrainingPair], fraction: float, seed: int = 0
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(train, held out): a seeded random ``fraction`` of the queries is held out."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"holdout fraction must be in [0, 1), got {fraction!r}")
    n_out = int(round(fraction * len(pairs)))
    picked = set(np.random.default_rng([seed, 1]).permutation(len(pairs))[:n_out].tolist())
    return (
        [p for i, p in enumerate(pairs) if i not in picked],
        [p for i, p in enumerate(pairs) if i in picked],
    )


# -------------------------------------------------------------------------------- mining


@dataclass(frozen=True)
class MiningConfig:
    """How hard negatives are mined: the first ``depth`` hits of ``mode`` minus the positives.

    ``negatives`` are taken best-ranked first. When the first stage finds fewer (BM25 only
    returns documents sharing a term with the query), random other documents fill the group.
    ``mode`` None means hybrid when the index has a dense part, else BM25.
    """

    mode: str | None = None
    depth: int = 30
    negatives: int = 7
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"mining mode must be one of {MODES}, got {self.mode!r}")
        for name in ("depth", "negatives", "batch_size"):
            check_int(name, getattr(self, name))

    def resolved_mode(self, index: Index) -> str:
        return self.mode or ("hybrid" if index.dense is not None else "bm25")


def _batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def first_stage(
    index: Index,
    queries: Sequence[str],
    mode: str,
    k: int,
    *,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "first stage",
) -> list[list[Hit]]:
    """The first stage's top ``k`` for every query, in batches, with a progress bar (shown
    before the retriever is made, so a query encoder's loading is not silent)."""
    from tqdm.auto import tqdm

    out: list[list[Hit]] = []
    with tqdm(total=len(queries), desc=desc, unit="query", disable=not progress) as bar:
        # the bar first: making the retriever may load a query encoder (seconds, silent)
        retriever = make_retriever(index, mode)
        for chunk in _batched(list(queries), batch_size):
            out.extend(retriever.retrieve_batch(list(chunk), k))
            bar.update(len(chunk))
    return out


def mine_hard_negatives(
    index: Index,
    pairs: Sequence[TrainingPair],
    config: MiningConfig = MiningConfig(),
    *,
    progress: bool = True,
) -> list[TrainExample]:
    """One training group per (query, positive): the positive's text and the hard negatives'.

    Every positive id must be in the index (an unknown id is an IngestError naming it).
    """
    if not pairs:
        raise ConfigError("no training pairs to mine negatives for")
    wanted = sorted({d for p in pairs for d in p.positives})
    records = index.corpus.get_many(wanted)
    missing = [d for d in wanted if d not in records]
    if missing:
        example = next(p for p in pairs if missing[0] in p.positives)
        raise IngestError(
            f"positive document id {missing[0]!r} (query {example.qid!r}) is not in "
            f"the index {index.path}" + (f" ({len(missing)} ids are missing)" if len(missing) > 1 else ""),
            field="positive",
        )
    mode = config.resolved_mode(index)
    longest = max(len(p.positives) for p in pairs)
    lists = first_stage(
        index,
        [p.query for p in pairs],
        mode,
        config.depth + longest,
        batch_size=config.batch_size,
        progress=progress,
        desc="mining negatives",
    )
    rng = np.random.default_rng([config.seed, 2])
    chosen: list[list[str]] = []
    for pair, hits in zip(pairs, lists, strict=True):
        negatives = [
            h.doc_id for h in hits[: config.depth + len(pair.positives)] if h.doc_id not in pair.positives
        ][: config.negatives]
        if len(negatives) < config.negatives:
            negatives += _random_fill(
                index, rng, set(pair.positives) | set(negatives), config.negatives - len(negatives)
            )
        chosen.append(negatives)
    texts = {d: r.indexed_text for d, r in records.items()}
    need = sorted({d for negs in chosen for d in negs} - set(texts))
    texts.update({d: r.indexed_text for d, r in index.corpus.get_many(need).items()})
    return [
        TrainExample(pair.query, texts[pos], tuple(texts[d] for d in negs))
        for pair, negs in zip(pairs, chosen, strict=True)
        for pos in pair.positives
    ]


def _random_fill(index: Index, rng: np.random.Generator, exclude: set[str], n: int) -> list[str]:
    pool = [
        i
        for i in rng.permutation(len(index))[: n + len(exclude) + 8].tolist()
        if str(index.doc_ids[i]) not in exclude
    ]
    return [str(index.doc_ids[i]) for i in pool[:n]]


# -------------------------------------------------------------------------------- fusion


def rerank_lists(
    index: Index,
    reranker: Reranker,
    queries: Sequence[str],
    candidates: Sequence[list[Hit]],
    k: int,
    *,
    progress: bool = True,
) -> list[list[Hit]]:
    """The reranker's scores for the best ``k`` candidates of each query (all of them, ranked)."""
    from tqdm.auto import tqdm

    out = []
    for query, hits in tqdm(
        list(zip(queries, candidates, strict=True)), desc="reranking", unit="query", disable=not progress
    ):
        head = index.hydrate(hits[:k])
        out.append(reranker.rerank(query, head) if head else [])
    return out


def choose_fusion_weight(
    index: Index,
    model_dir: str | os.PathLike[str],
    pairs: Sequence[TrainingPair],
    *,
    mode: str,
    rerank_k: int = 30,
    grid: Sequence[float] = DEFAULT_GRID,
    max_length: int = 512,
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep the fusion weight on held-out ``pairs`` and record the default in the manifest.

    The default is the sweep's best weight only when it beat the first stage by a margin
    the held-out set can resolve (:data:`~.eval.fusion_tuning.RULE`), else 0. Returns the
    ``fusion`` record: that weight, nDCG@10 for every weight of the grid, the test's counts
    and reason, and how it was measured.
    """
    from tansaku.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(model_dir, max_length=max_length)
    queries = [p.query for p in pairs]
    firsts = first_stage(index, queries, mode, rerank_k, progress=progress, desc="held-out first stage")
    reranked = rerank_lists(index, reranker, queries, firsts, rerank_k, progress=progress)
    qrels = {p.qid: {d: 1 for d in p.positives} for p in pairs}
    scores = sweep_per_query(
        {p.qid: f for p, f in zip(pairs, firsts, strict=True)},
        {p.qid: r for p, r in zip(pairs, reranked, strict=True)},
        qrels,
        grid,
    )
    record = fusion_record(
        scores,
        first_stage=mode,
        rerank_k=rerank_k,
        chosen_on="queries held out of the training pairs (never trained on)",
    )
    record["held_out_queries"] = len(pairs)
    _record_fusion(model_dir, record)
    return record


def _record_fusion(model_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    manifest = read_manifest(model_dir) or {}
    manifest["fusion"] = record
    write_manifest(model_dir, manifest)


def no_held_out_fusion(model_dir: str | os.PathLike[str], mode: str) -> dict[str, Any]:
    """Record weight 0 for a model trained without held-out queries (nothing shows it helps)."""
    record = {
        "weight": 0.0,
        "metric": "ndcg@10",
        "by_weight": {},
        "best_weight": None,
        "beat_first_stage": False,
        "reason": "no held-out queries (--holdout 0): nothing shows the reranker beats the first stage",
        "test": {"rule": RULE},
        "first_stage": mode,
        "held_out_queries": 0,
    }
    _record_fusion(model_dir, record)
    return record


def held_out_warning(n_pairs: int, n_held_out: int, holdout: float) -> str | None:
    """Said before training when the held-out queries will be too few to choose a weight."""
    if n_held_out >= MIN_HELD_OUT_QUERIES:
        return None
    what = "no held-out queries" if not n_held_out else f"only {n_held_out} held-out queries"
    return (
        f"warning: {what} (--holdout {holdout:g} of {n_pairs} pairs): at least "
        f"{MIN_HELD_OUT_QUERIES} are needed to choose a fusion weight, so the model will record "
        "weight 0 (searches keep the first stage's order unless --rerank-fusion W is given); "
        "raise --holdout or add pairs"
    )


# -------------------------------------------------------------------------------- the command


def train_reranker(
    base: str | os.PathLike[str],
    pairs: Sequence[TrainingPair] | None,
    index_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    mining: MiningConfig | None = None,
    *,
    holdout: float = 0.1,
    rerank_k: int = 30,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    data_sources: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[TrainResult, dict[str, Any] | None]:
    """Mine hard negatives in ``index_path``, train from ``base`` into ``out_dir``, choose the
    fusion weight on the held-out ``holdout`` fraction of the queries.

    Returns the training result and the fusion record (None when the run was paused). The
    record's ``weight`` is the default searches use: the held-out sweep's best only when it
    beat the first stage by a margin the held-out queries can resolve, else 0 (also without
    held-out queries). With ``resume`` the mined groups stored with the checkpoints are
    reused (the pairs are still needed for the held-out queries). Warnings (a loss that did
    not fall, too few held-out queries) reach ``log`` as lines starting ``warning:``.
    """
    say = log or (lambda _msg: None)
    config, mining = config or TrainConfig(), mining or MiningConfig()
    if not pairs:
        raise ConfigError("no training pairs given (--train)")
    train_pairs, held_out = split_holdout(pairs, holdout, config.seed)
    if not train_pairs:
        raise ConfigError(f"holdout {holdout} leaves no training pairs out of {len(pairs)}")
    warning = held_out_warning(len(pairs), len(held_out), holdout)
    if warning:
        say(warning)  # before the long part, while the run can still be changed
    say(f"opening index {index_path}")
    index = Index.open(index_path)
    try:
        mode = mining.resolved_mode(index)
        examples = None
        provenance = {
            "sources": list(data_sources),
            "index": str(Path(index_path).resolve()),
            "index_docs": len(index),
            "pairs": len(pairs),
            "train_pairs": len(train_pairs),
            "held_out_pairs": len(held_out),
            "holdout_fraction": holdout,
            "mining": {**asdict(mining), "mode": mode},
        }
        if not (resume and latest_checkpoint(out_dir) is not None):
            start = time.perf_counter()
            examples = mine_hard_negatives(index, train_pairs, mining, progress=progress)
            provenance["mining_seconds"] = round(time.perf_counter() - start, 2)
            say(
                f"mined {sum(len(e.negatives) for e in examples)} hard negatives for "
                f"{len(examples)} groups ({mode} top {mining.depth}) in "
                f"{provenance['mining_seconds']:.1f} s"
            )
        result = train_cross_encoder(
            base,
            examples,
            out_dir,
            config,
            resume=resume,
            overwrite=overwrite,
            stop_after=stop_after,
            provenance=provenance,
            progress=progress,
            log=say,
        )
        if not result.completed:
            return result, None
        if held_out:
            say(f"choosing the fusion weight on {len(held_out)} held-out queries")
            fusion = choose_fusion_weight(
                index, out_dir, held_out, mode=mode, rerank_k=rerank_k, progress=progress
            )
            say(
                f"nDCG@10 on {len(held_out)} held-out queries by fusion weight: "
                + ", ".join(f"{w}: {s:.4f}" for w, s in fusion["by_weight"].items())
            )
        else:
            fusion = no_held_out_fusion(out_dir, mode)
        if fusion["beat_first_stage"]:
            say(f"fusion weight {fusion['weight']:g} recorded as the search default: {fusion['reason']}")
        else:
            say(
                f"warning: fusion weight 0 recorded as the search default (searches with this "
                f"reranker keep the first stage's order unless --rerank-fusion W is given): "
                f"{fusion['reason']}"
            )
        return result, fusion
    finally:
        index.close()

"""Measuring a search pipeline: per-stage metrics, run files, paired significance tests."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from tansaku.index.filters import FilterSpec, parse_filter
from tansaku.index.hit import Hit
from tansaku.rerank.base import Reranker

from ..search import SearchPipeline
from .metrics import DEFAULT_METRICS, judged_subset, per_query

Qrels = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class StageReport:
    """One stage's ranked lists, mean metrics, per-query values and time.

    ``queries`` is the number of judged queries the means are over (see :func:`score_stage`).
    """

    stage: str
    results: dict[str, list[Hit]]
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    seconds: float
    queries: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "queries": self.queries,
            "seconds": round(self.seconds, 3),
            "metrics": self.metrics,
        }


def as_run(results: Mapping[str, Sequence[Hit]]) -> dict[str, dict[str, float]]:
    return {qid: {h.doc_id: h.score for h in hits} for qid, hits in results.items()}


def score_stage(
    stage: str,
    results: dict[str, list[Hit]],
    qrels: Qrels,
    metrics: Sequence[str],
    seconds: float,
    *,
    complete: bool = False,
) -> StageReport:
    """Score ``results``: means over the judged queries that were evaluated (those in
    ``results``), as trec_eval does; ``complete`` averages over every query of ``qrels``
    instead, one not evaluated counting 0 (trec_eval ``-c``)."""
    judged = judged_subset(qrels, results, complete)
    pq = per_query(judged, as_run(results), metrics)
    means = {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in pq.items()}
    return StageReport(stage, results, means, pq, seconds, len(judged))


def evaluate_pipeline(
    pipeline: SearchPipeline,
    queries: Mapping[str, str],
    qrels: Qrels,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    batch_size: int = 32,
    progress: bool = True,
    filter: FilterSpec = None,
    complete: bool = False,
) -> list[StageReport]:
    """Run every judged query; report the first stage and (if any) the reranked stage.

    The reranked list is scored over all ``rerank_k`` reranked candidates (not just
    ``top_n``), so Recall@100 after reranking is meaningful. ``filter`` (a metadata
    filter) restricts every query's search; judged documents it excludes count as misses.
    Means are over the judged queries that have a text in ``queries`` (the ones run);
    ``complete`` averages over every judged query, one without a text counting 0
    (trec_eval ``-c``).
    """
    parsed = parse_filter(filter)  # a bad filter fails before the first batch
    qids = [q for q in queries if q in qrels]
    first: dict[str, list[Hit]] = {}
    reranked: dict[str, list[Hit]] = {}
    seconds = {"retrieve": 0.0, "rerank": 0.0}
    top_n = pipeline.rerank_k if pipeline.reranker is not None else pipeline.retrieve_k
    it = iter(qids)
    with tqdm(total=len(qids), desc="evaluate", unit="query", disable=not progress) as bar:
        while batch := list(islice(it, batch_size)):
            results = pipeline.search_batch([queries[q] for q in batch], top_n=top_n, filter=parsed)
            for qid, res in zip(batch, results, strict=True):
                first[qid] = res.candidates
                seconds["retrieve"] += res.timings_ms.get("retrieve", 0.0) / 1000
                if pipeline.reranker is not None:
                    reranked[qid] = res.hits
                    seconds["rerank"] += (
                        res.timings_ms.get("rerank", 0.0) + res.timings_ms.get("fetch", 0.0)
                    ) / 1000
            bar.update(len(batch))
    stage = pipeline.retriever.stage
    reports = [score_stage(stage, first, qrels, metrics, seconds["retrieve"], complete=complete)]
    if pipeline.reranker is not None:
        total = seconds["retrieve"] + seconds["rerank"]
        reports.append(score_stage(f"{stage}+rerank", reranked, qrels, metrics, total, complete=complete))
    return reports


@dataclass(frozen=True)
class Comparison:
    """Paired comparison of two systems on one metric over the same queries."""

    metric: str
    mean_a: float
    mean_b: float
    queries: int
    t_test_p: float
    randomization_p: float
    wins: int = 0
    losses: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        return self.mean_b - self.mean_a

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "delta": self.delta,
            "queries": self.queries,
            "t_test_p": self.t_test_p,
            "randomization_p": self.randomization_p,
            "wins": self.wins,
            "losses": self.losses,
        }


def compare(
    a: Mapping[str, float], b: Mapping[str, float], metric: str, *, trials: int = 10_000, seed: int = 0
) -> Comparison:
    """Paired t-test and two-sided randomisation (permutation) test of B against A."""
    qids = sorted(set(a) & set(b))
    x = np.array([a[q] for q in qids])
    y = np.array([b[q] for q in qids])
    diff = y - x
    if len(qids) < 2 or not np.any(diff):
        t_p = 1.0
    else:
        t_p = float(stats.ttest_rel(y, x).pvalue)
    observed = abs(diff.mean()) if len(diff) else 0.0
    rng = np.random.default_rng(seed)
    # Swap each query's pair with probability 1/2 (Fisher's randomisation test).
    signs = rng.choice(np.array([-1.0, 1.0]), size=(trials, len(diff)))
    permuted = np.abs((signs * diff).mean(axis=1)) if len(diff) else np.zeros(trials)
    rand_p = float((np.sum(permuted >= observed - 1e-12) + 1) / (trials + 1))
    return Comparison(
        metric,
        float(x.mean()) if len(x) else 0.0,
        float(y.mean()) if len(y) else 0.0,
        len(qids),
        t_p,
        rand_p,
        int(np.sum(diff > 0)),
        int(np.sum(diff < 0)),
    )


def format_table(reports: Sequence[StageReport], metrics: Sequence[str]) -> str:
    """A plain-text table: one row per stage."""
    head = ["stage", "queries", *metrics, "seconds"]
    rows = [
        [r.stage, str(r.queries), *(f"{r.metrics[m]:.4f}" for m in metrics), f"{r.seconds:.1f}"]
        for r in reports
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def evaluate_candidates(
    dataset: Any,
    reranker: Reranker | None,
    metrics: Sequence[str] = ("ndcg@10", "mrr@10"),
    *,
    analyzer: str = "ja-surface",
    progress: bool = True,
) -> list[StageReport]:
    """Score each query's own candidates (as the JQaRA evaluator does).

    Stages: ``bm25`` (BM25Okapi over that query's candidates, "title text"; ``ja-surface``
    tokens by default, the fugashi surface forms of JQaRA's own BM25 baseline) and,
    with a reranker, ``rerank`` (the cross-encoder over the same "title text").
    """
    from tansaku.index import BM25Index, get_analyzer

    an = get_analyzer(analyzer)
    bm25_results: dict[str, list[Hit]] = {}
    rerank_results: dict[str, list[Hit]] = {}
    seconds = {"bm25": 0.0, "rerank": 0.0}
    for qid in tqdm(list(dataset.queries), desc="evaluate", unit="query", disable=not progress):
        query = dataset.queries[qid]
        docs = [
            Hit(c["id"], 0.0, i + 1, "candidates", title=c["title"] or None, text=c["text"])
            for i, c in enumerate(dataset.candidates[qid])
        ]
        t0 = time.perf_counter()
        index = BM25Index.build([an.tokenize(d.indexed_text or "") for d in docs])
        scores = index.get_scores(an.tokenize(query), getattr(an, "term_weight", None))
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        bm25_results[qid] = [Hit(docs[i].doc_id, float(scores[i]), r, "bm25") for r, i in enumerate(order, 1)]
        seconds["bm25"] += time.perf_counter() - t0
        if reranker is not None:
            t0 = time.perf_counter()
            rerank_results[qid] = reranker.rerank(query, docs)
            seconds["rerank"] += time.perf_counter() - t0
    reports = [score_stage("bm25", bm25_results, dataset.qrels, metrics, seconds["bm25"])]
    if reranker is not None:
        reports.append(score_stage("rerank", rerank_results, dataset.qrels, metrics, seconds["rerank"]))
    return reports

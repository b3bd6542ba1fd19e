"""IR metrics through trec_eval (pytrec_eval): nDCG@k, MRR@k, Recall@k, MAP@k, P@k."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import pytrec_eval

from tansaku.index.errors import ConfigError

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]
DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")

_MEASURES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "p": "P"}
_METRIC = re.compile(r"^(ndcg|mrr|recall|map|p)@(\d+)$")


def _parse(metric: str) -> tuple[str, int]:
    m = _METRIC.match(metric.lower())
    if not m:
        raise ConfigError(f"unknown metric {metric!r}; use ndcg@K, mrr@K, recall@K, map@K or p@K")
    return m.group(1), int(m.group(2))


def rank_order(run: Run) -> dict[str, dict[str, float]]:
    """Scores replaced by strictly decreasing values in the run's own order.

    trec_eval re-sorts by score and breaks ties by doc id, which would silently
    reorder tied hits; giving it the rank order keeps each system's ranking.
    """
    out = {}
    for qid, docs in run.items():
        ordered = sorted(docs.items(), key=lambda kv: -kv[1])
        out[qid] = {doc: float(len(ordered) - i) for i, (doc, _) in enumerate(ordered)}
    return out


def per_query(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str] = DEFAULT_METRICS,
) -> dict[str, dict[str, float]]:
    """metric -> query id -> value, over every query in ``qrels`` (missing runs score 0)."""
    metrics = list(metrics)
    parsed = {m: _parse(m) for m in metrics}
    ordered = rank_order(run)
    qrels = {q: dict(d) for q, d in qrels.items()}
    runs = {q: ordered.get(q, {}) for q in qrels}
    result: dict[str, dict[str, float]] = {m: {} for m in metrics}
    plain = {f"{_MEASURES[n]}.{k}" for n, k in parsed.values() if n != "mrr"}
    if plain:
        evaluated = pytrec_eval.RelevanceEvaluator(qrels, plain).evaluate(runs)
        for m, (name, k) in parsed.items():
            if name != "mrr":
                key = f"{_MEASURES[name]}_{k}"
                result[m] = {q: evaluated.get(q, {}).get(key, 0.0) for q in qrels}
    for m, (name, k) in parsed.items():
        if name == "mrr":
            cut = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:k]) for q, d in runs.items()}
            evaluated = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
            result[m] = {q: evaluated.get(q, {}).get("recip_rank", 0.0) for q in qrels}
    return result


def judged_subset(
    qrels: Qrels, evaluated: Iterable[str], complete: bool = False
) -> dict[str, Mapping[str, int]]:
    """The judged queries a mean is taken over.

    By default those of ``evaluated`` that ``qrels`` judges, as trec_eval averages over the
    queries of the run; ``complete`` keeps every judged query (trec_eval ``-c``: a judged query
    that was not evaluated scores 0).
    """
    if complete:
        return dict(qrels)
    wanted = set(evaluated)
    return {q: rels for q, rels in qrels.items() if q in wanted}


def evaluate(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Mean of each metric over the queries in ``qrels``."""
    scores = per_query(qrels, run, metrics)
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in scores.items()}

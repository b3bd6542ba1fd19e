"""Metrics through trec_eval agree with hand-computed values and keep each run's order."""

from __future__ import annotations

import math

import pytest

from tansaku.index import ConfigError
from tansaku.pipeline.eval.metrics import evaluate, per_query

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"z": 1}}
RUN = {
    "q1": {"x": 3.0, "a": 2.0, "y": 1.0},  # relevant at rank 2
    "q2": {"b": 5.0, "x": 4.0, "c": 3.0},  # relevant at ranks 1 and 3
    "q3": {"x": 1.0},
}  # relevant never retrieved


def test_hand_computed_values():
    pq = per_query(QRELS, RUN, ["ndcg@10", "mrr@10", "recall@2", "recall@10", "mrr@1"])
    assert pq["ndcg@10"]["q1"] == pytest.approx(1 / math.log2(3))
    ideal = 1 + 1 / math.log2(3)
    assert pq["ndcg@10"]["q2"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert pq["ndcg@10"]["q3"] == 0
    assert pq["mrr@10"] == {"q1": 0.5, "q2": 1.0, "q3": 0.0}
    assert pq["mrr@1"]["q1"] == 0.0  # the cut applies before the reciprocal rank
    assert pq["recall@2"] == {"q1": 1.0, "q2": 0.5, "q3": 0.0}
    means = evaluate(QRELS, RUN, ["recall@10"])
    assert means["recall@10"] == pytest.approx((1 + 1 + 0) / 3)


def test_missing_query_in_run_scores_zero_and_ties_keep_run_order():
    # A tie listed a-then-x: trec_eval alone would put x first (doc id descending).
    run = {"q1": {"a": 1.0, "x": 1.0}}
    pq = per_query(QRELS, run, ["mrr@10"])
    assert pq["mrr@10"]["q2"] == 0.0 and pq["mrr@10"]["q1"] == 1.0
    run = {"q1": {"x": 1.0, "a": 1.0}}
    assert per_query(QRELS, run, ["mrr@10"])["mrr@10"]["q1"] == 0.5


def test_unknown_metric():
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(QRELS, RUN, ["bleu@4"])

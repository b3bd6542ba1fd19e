"""Evaluation: TREC I/O, metrics against independent formulas, per-stage reports, the CLI."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import write_jsonl
from tansaku.index import SAMPLE_CORPUS, Hit, IngestError, build_index, read_file
from tansaku.pipeline import SearchPipeline
from tansaku.pipeline.cli import main
from tansaku.pipeline.eval.datasets import load_candidates
from tansaku.pipeline.eval.evaluation import compare, evaluate_candidates, evaluate_pipeline
from tansaku.pipeline.eval.metrics import per_query
from tansaku.pipeline.eval.trec import (
    read_qrels,
    read_queries,
    read_run,
    write_qrels,
    write_queries,
    write_run,
)
from tansaku.rerank import CrossEncoderReranker
from tansaku.retrieve import BM25Retriever

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_trec_round_trips(tmp_path):
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    results = {
        "q1": [Hit("d2", 3.5, 1, "bm25"), Hit("d1", 1.25, 2, "bm25")],
        "q2": [Hit("d3", 0.5, 1, "bm25")],
    }
    for suffix in ("", ".gz"):
        write_qrels(tmp_path / f"q.qrels{suffix}", qrels)
        assert read_qrels(tmp_path / f"q.qrels{suffix}") == qrels
        write_run(tmp_path / f"r.run{suffix}", results, tag="t")
        assert read_run(tmp_path / f"r.run{suffix}") == {"q1": {"d2": 3.5, "d1": 1.25}, "q2": {"d3": 0.5}}
        write_queries(tmp_path / f"q.jsonl{suffix}", {"q1": "富士山", "q2": "寿司"})
        assert read_queries(tmp_path / f"q.jsonl{suffix}") == {"q1": "富士山", "q2": "寿司"}
    with gzip.open(tmp_path / "r.run.gz", "rt") as fh:
        assert fh.readline().split() == ["q1", "Q0", "d2", "1", "3.500000", "t"]
    (tmp_path / "q.tsv").write_text("1\t東京の人口\n2\tsushi\n", encoding="utf-8")
    assert read_queries(tmp_path / "q.tsv") == {"1": "東京の人口", "2": "sushi"}


def test_trec_errors_name_the_line(tmp_path):
    (tmp_path / "bad.qrels").write_text("q1 0 d1 1\nq1 0 d2\n")
    with pytest.raises(IngestError, match=r"bad.qrels, line 2: a qrels line has 4 columns"):
        read_qrels(tmp_path / "bad.qrels")
    (tmp_path / "bad.run").write_text("q1 Q0 d1 1 high t\n")
    with pytest.raises(IngestError, match="line 1: score must be a number"):
        read_run(tmp_path / "bad.run")
    with pytest.raises(IngestError, match="whitespace"):
        write_run(tmp_path / "x.run", {"q": [Hit("a b", 1.0, 1, "s")]})


def reference_metrics(qrels, run, k=10):
    """Textbook nDCG@k (exponential gain as trec_eval's ndcg_cut: gain = rel), MRR@k, recall@k."""
    out = {}
    for qid, rels in qrels.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda kv: -kv[1])
        dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, (d, _) in enumerate(ranked[:k]))
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
        rr = next((1 / (i + 1) for i, (d, _) in enumerate(ranked[:k]) if rels.get(d, 0) > 0), 0)
        relevant = {d for d, r in rels.items() if r > 0}
        recall = len(relevant & {d for d, _ in ranked[:k]}) / len(relevant)
        out[qid] = (dcg / idcg if idcg else 0.0, rr, recall)
    return out


def test_metrics_match_reference_on_generated_run():
    rng = np.random.default_rng(7)
    docs = [f"d{i}" for i in range(60)]
    qrels = {
        f"q{i}": {d: int(rng.integers(1, 3)) for d in rng.choice(docs, 4, replace=False)} for i in range(40)
    }
    run = {
        q: dict(zip(rng.choice(docs, 30, replace=False), rng.permutation(30) + 0.5, strict=True))
        for q in qrels
    }
    ours = per_query(qrels, run, ["ndcg@10", "mrr@10", "recall@10"])
    ref = reference_metrics(qrels, run)
    for q in qrels:
        assert ours["ndcg@10"][q] == pytest.approx(ref[q][0], abs=1e-9)
        assert ours["mrr@10"][q] == pytest.approx(ref[q][1], abs=1e-9)
        assert ours["recall@10"][q] == pytest.approx(ref[q][2], abs=1e-9)


def test_compare_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 200))}
    better = {q: min(1.0, v + 0.1) for q, v in a.items()}
    noise = {q: v + float(rng.normal(0, 0.01)) for q, v in a.items()}
    strong = compare(a, better, "ndcg@10", trials=2000)
    assert strong.delta > 0.05 and strong.t_test_p < 0.001 and strong.randomization_p < 0.01
    assert strong.wins > strong.losses
    same = compare(a, a, "ndcg@10", trials=2000)
    assert same.t_test_p == 1.0 and same.randomization_p == 1.0
    assert compare(a, noise, "ndcg@10", trials=2000).randomization_p > 0.01


@pytest.fixture(scope="module")
def sample_eval(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    index = build_index(tmp / "idx", read_file(SAMPLE_CORPUS), progress=False)
    queries = {
        "q1": "富士山の標高",
        "q2": "検索エンジンの仕組み",
        "q3": "寿司のネタ",
        "q4": "how does a search engine rank documents",
    }
    qrels = {"q1": {"ja-001": 1}, "q2": {"ja-023": 1}, "q3": {"ja-009": 1, "ja-010": 1}, "q4": {"en-003": 1}}
    write_queries(tmp / "queries.jsonl", queries)
    write_qrels(tmp / "qrels.txt", qrels)
    return tmp, index, queries, qrels


def test_evaluate_pipeline_per_stage(sample_eval, tiny_bert_reranker_dir):
    _, index, queries, qrels = sample_eval
    reranker = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128)
    pipe = SearchPipeline(BM25Retriever(index), reranker, retrieve_k=30, rerank_k=20, top_n=5)
    first, second = evaluate_pipeline(pipe, queries, qrels, ["ndcg@10", "recall@100"], progress=False)
    assert first.stage == "bm25" and second.stage == "bm25+rerank"
    direct = {q: BM25Retriever(index).retrieve(t, 30) for q, t in queries.items()}
    assert {q: [h.doc_id for h in hits] for q, hits in first.results.items()} == {
        q: [h.doc_id for h in hits] for q, hits in direct.items()
    }
    assert all(len(hits) == min(20, len(direct[q])) for q, hits in second.results.items())
    expected = per_query(
        qrels, {q: {h.doc_id: h.score for h in hits} for q, hits in direct.items()}, ["ndcg@10"]
    )["ndcg@10"]
    assert first.metrics["ndcg@10"] == pytest.approx(sum(expected.values()) / 4)
    # Reranking reorders the same 20 candidates, so recall@100 (within 20) cannot change.
    assert second.metrics["recall@100"] <= first.metrics["recall@100"]


def test_means_are_over_the_evaluated_queries_unless_complete(sample_eval, tmp_path, capsys):
    tmp, index, queries, qrels = sample_eval
    pipe = SearchPipeline(BM25Retriever(index), None, retrieve_k=30, top_n=5)
    # six more judged queries have no text: trec_eval (without -c) leaves them out of the mean
    more = qrels | {f"x{i}": {"ja-001": 1} for i in range(6)}
    (first,) = evaluate_pipeline(pipe, queries, more, ["ndcg@10"], progress=False)
    (alone,) = evaluate_pipeline(pipe, queries, qrels, ["ndcg@10"], progress=False)
    assert first.queries == 4 and first.metrics == pytest.approx(alone.metrics)
    (complete,) = evaluate_pipeline(pipe, queries, more, ["ndcg@10"], progress=False, complete=True)
    assert complete.queries == 10 and complete.per_query["ndcg@10"]["x0"] == 0.0
    assert complete.metrics["ndcg@10"] == pytest.approx(alone.metrics["ndcg@10"] * 4 / 10)
    write_qrels(tmp_path / "more.qrels", more)
    args = ["eval", index.path, "--queries", tmp / "queries.jsonl", "--qrels", tmp_path / "more.qrels"]
    code = main([*map(str, args), "--out", str(tmp_path / "r1"), "-q", "--json"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0 and out["stages"][0]["queries"] == 4
    assert out["stages"][0]["metrics"]["ndcg@10"] == pytest.approx(alone.metrics["ndcg@10"])
    assert out["judged_queries"] == 10 and out["judged_without_text"] == 6
    assert "6 of 10 judged queries are without a text in" in captured.err and "--complete" in captured.err
    code = main([*map(str, args), "--out", str(tmp_path / "r2"), "-q", "--json", "-c"])
    captured = capsys.readouterr()
    stage = json.loads(captured.out)["stages"][0]
    assert stage["queries"] == 10 and stage["metrics"]["ndcg@10"] == pytest.approx(
        complete.metrics["ndcg@10"]
    )
    assert "counted as 0 (--complete)" in captured.err
    # a run file: the mean is over the judged queries in the run, as trec_eval's
    run = tmp_path / "r1" / "bm25.run"
    main(["eval", "--run", str(run), "--qrels", str(tmp_path / "more.qrels"), "--json"])
    captured = capsys.readouterr()
    (entry,) = json.loads(captured.out)["runs"]
    assert entry["queries"] == 4 and entry["judged_not_in_run"] == 6
    assert entry["metrics"]["ndcg@10"] == pytest.approx(alone.metrics["ndcg@10"])
    assert "6 of 10 judged queries are not in" in captured.err
    main(["eval", "--run", str(run), "--qrels", str(tmp_path / "more.qrels"), "--json", "--complete"])
    (entry,) = json.loads(capsys.readouterr().out)["runs"]
    assert entry["queries"] == 10 and entry["metrics"]["ndcg@10"] == pytest.approx(
        complete.metrics["ndcg@10"]
    )


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_eval_index_runs_and_compare(sample_eval, tmp_path):
    tmp, index, _, _ = sample_eval
    proc = run_cli(
        "eval",
        index.path,
        "--queries",
        tmp / "queries.jsonl",
        "--qrels",
        tmp / "qrels.txt",
        "--out",
        tmp_path / "runs",
        "--json",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    (stage,) = json.loads(proc.stdout)["stages"]
    assert stage["stage"] == "bm25" and stage["queries"] == 4
    assert stage["metrics"]["ndcg@10"] > 0.7 and set(stage["metrics"]) == {
        "ndcg@10",
        "mrr@10",
        "recall@10",
        "recall@100",
    }
    run_file = tmp_path / "runs" / "bm25.run"
    assert stage["run_file"] == str(run_file) and len(read_run(run_file)) == 4
    # The written run re-scores to the same numbers.
    proc = run_cli("eval", "--run", run_file, "--qrels", tmp / "qrels.txt", "--json")
    again = json.loads(proc.stdout)["runs"][0]["metrics"]
    assert again == pytest.approx(stage["metrics"])
    # Two runs: a paired comparison; a worse run (reversed) loses.
    reversed_run = {q: {d: -s for d, s in docs.items()} for q, docs in read_run(run_file).items()}
    with open(tmp_path / "rev.run", "w") as fh:
        for q, docs in reversed_run.items():
            for r, (d, s) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), 1):
                fh.write(f"{q} Q0 {d} {r} {s} rev\n")
    proc = run_cli(
        "eval", "--run", run_file, "--run", tmp_path / "rev.run", "--qrels", tmp / "qrels.txt", "--json"
    )
    comparison = {c["metric"]: c for c in json.loads(proc.stdout)["comparison"]}
    assert comparison["ndcg@10"]["delta"] < 0 and comparison["ndcg@10"]["losses"] >= 3
    text = run_cli(
        "eval",
        index.path,
        "--queries",
        tmp / "queries.jsonl",
        "--qrels",
        tmp / "qrels.txt",
        "--out",
        tmp_path / "r2",
        "-q",
    ).stdout
    assert text.splitlines()[0].split()[:3] == ["stage", "queries", "ndcg@10"]
    bad = run_cli("eval", "--run", run_file)
    assert bad.returncode == 2 and "--qrels" in bad.stderr


def test_candidates_adapter_and_evaluation(tmp_path, tiny_bert_reranker_dir):
    rows = [
        {
            "q_id": "1",
            "question": "富士山の高さは",
            "passage_row_id": "p1",
            "title": "富士山",
            "text": "富士山の高さは3776メートル",
            "label": 1,
        },
        {
            "q_id": "1",
            "question": "富士山の高さは",
            "passage_row_id": "p2",
            "title": "寿司",
            "text": "寿司は日本料理",
            "label": 0,
        },
        {
            "q_id": "2",
            "question": "寿司とは",
            "passage_row_id": "p3",
            "title": "天ぷら",
            "text": "天ぷらは揚げ物",
            "label": 0,
        },
        {
            "q_id": "2",
            "question": "寿司とは",
            "passage_row_id": "p4",
            "title": "寿司",
            "text": "寿司は酢飯を使う料理",
            "label": 1,
        },
    ]
    path = write_jsonl(tmp_path / "jqara.jsonl", rows)
    ds = load_candidates(path)
    assert ds.queries == {"1": "富士山の高さは", "2": "寿司とは"}
    assert [c["id"] for c in ds.candidates["2"]] == ["p3", "p4"]
    assert ds.qrels == {"1": {"p1": 1, "p2": 0}, "2": {"p3": 0, "p4": 1}}
    reranker = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128)
    bm25, rr = evaluate_candidates(ds, reranker, ["ndcg@10", "mrr@10"], progress=False)
    assert bm25.metrics == {"ndcg@10": 1.0, "mrr@10": 1.0}  # lexical overlap picks both
    scores = {
        q: reranker.score([(ds.queries[q], f"{c['title']} {c['text']}") for c in ds.candidates[q]])
        for q in ds.queries
    }
    relevant = {"1": 0, "2": 1}  # position of each query's relevant candidate
    per_q = {q: 1.0 if np.argmax(scores[q]) == relevant[q] else 0.5 for q in ("1", "2")}
    assert rr.per_query["mrr@10"] == pytest.approx(per_q)
    expected_rr = np.mean(list(per_q.values()))
    assert rr.metrics["mrr@10"] == pytest.approx(expected_rr)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "label": "yes"}])
    with pytest.raises(IngestError, match="label must be an integer"):
        load_candidates(bad)

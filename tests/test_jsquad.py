"""BM25 quality on the real JSQuAD benchmark (skips when ../shared is absent)."""

from __future__ import annotations

import pytest

from tansaku.index import build_index, read_dicts
from tansaku.pipeline.eval.datasets import load_jsquad
from tansaku.pipeline.eval.metrics import evaluate
from tansaku.retrieve import BM25Retriever

pytestmark = pytest.mark.slow  # the shared JSQuAD benchmark


@pytest.fixture(scope="module")
def jsquad(jsquad_path):
    return load_jsquad(jsquad_path)


def test_adapter_counts(jsquad):
    assert len(jsquad.corpus) == 1145 and len(jsquad.queries) == 4442
    assert all(len(rel) == 1 for rel in jsquad.qrels.values())
    doc = jsquad.corpus[0]
    assert doc["title"] and doc["text"] and "[SEP]" not in doc["title"] + doc["text"]


def test_bm25_quality(jsquad, tmp_path):
    index = build_index(tmp_path / "jsquad", read_dicts(jsquad.corpus), progress=False)
    retriever = BM25Retriever(index)
    qids = list(jsquad.queries)
    results = retriever.retrieve_batch([jsquad.queries[q] for q in qids], 100)
    run = {q: {h.doc_id: h.score for h in hits} for q, hits in zip(qids, results, strict=True)}
    scores = evaluate(jsquad.qrels, run, ["ndcg@10", "recall@100"])
    assert scores["ndcg@10"] >= 0.90, scores
    assert scores["recall@100"] >= 0.98, scores

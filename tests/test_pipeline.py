"""SearchPipeline and the Python API end to end: a real index, a tiny cross-encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tansaku
from tansaku.index import SAMPLE_CORPUS, ConfigError, ModelLoadError, build_index, read_file
from tansaku.pipeline import SearchConfig, SearchPipeline
from tansaku.rerank import CrossEncoderReranker
from tansaku.retrieve import BM25Retriever

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "idx"
    build_index(path, read_file(SAMPLE_CORPUS), progress=False).close()
    return path


def test_reranked_order_follows_reranker_scores(index_path, reranker):
    idx = tansaku.open(index_path, reranker=reranker, retrieve_k=30, rerank_k=20, top_n=5)
    res = idx.search("東京の電波塔")
    first = idx.pipeline().retriever.retrieve("東京の電波塔", 30)
    assert res.counts == {"retrieved": len(first), "reranked": min(20, len(first)), "returned": 5}
    assert set(res.timings_ms) == {"retrieve", "fetch", "rerank", "total"}
    assert all(v >= 0 for v in res.timings_ms.values())
    assert [h.rank for h in res.hits] == [1, 2, 3, 4, 5]
    assert all(h.stage == "rerank" and 0 <= h.score <= 1 for h in res.hits)
    # Independently score the same 20 candidates ("title text") and compare the order.
    head = idx.index.hydrate(first[:20])
    pairs = [("東京の電波塔", f"{h.title} {h.text}") for h in head]
    scores = reranker.score(pairs)
    expected = [head[i].doc_id for i in np.argsort(-scores, kind="stable")[:5]]
    assert [h.doc_id for h in res.hits] == expected
    np.testing.assert_allclose([h.score for h in res.hits], np.sort(scores)[::-1][:5], atol=1e-6)
    # Hits come back with the corpus fields, title and text kept apart.
    top = res.hits[0]
    assert top.title and top.text and not top.text.startswith(top.title + " ")
    assert top.metadata["lang"] in ("ja", "en")


def test_no_reranker_is_explicit_and_candidates_kept(index_path):
    with tansaku.open(index_path, reranker="none", top_n=3) as idx:
        res = idx.search("富士山")
    assert res.hits[0].stage == "bm25" and "rerank" not in res.timings_ms
    assert [h.doc_id for h in res.hits] == [h.doc_id for h in res.candidates[:3]]


def test_candidates_carry_what_the_search_fetched(index_path, reranker):
    index = tansaku.index.Index.open(index_path)
    retriever = BM25Retriever(index)
    first = retriever.retrieve("東京の電波塔", 30)
    for rerank, n in ((None, 4), (reranker, 10)):
        res = SearchPipeline(retriever, rerank, retrieve_k=30, rerank_k=10, top_n=4).search("東京の電波塔")
        assert [(h.doc_id, h.score, h.rank) for h in res.candidates] == [
            (h.doc_id, h.score, h.rank) for h in first
        ]
        assert res.candidates[:n] == index.hydrate(first[:n]) and res.candidates[n:] == first[n:]
    # a prepare that drops hits: its hits are returned, the candidates stay the first stage's
    drop = SearchPipeline(retriever, retrieve_k=30, top_n=4, prepare=lambda hits: index.hydrate(hits[1:]))
    res = drop.search("東京の電波塔")
    assert res.hits == index.hydrate(first[1:4]) and res.candidates == first
    index.close()


def test_k_values_validated(index_path, reranker):
    retriever = BM25Retriever(tansaku.index.Index.open(index_path))
    with pytest.raises(ConfigError, match=r"rerank_k \(50\) cannot exceed retrieve_k \(10\)"):
        SearchPipeline(retriever, reranker, retrieve_k=10, rerank_k=50)
    for bad in ({"top_n": 0}, {"retrieve_k": -1}, {"rerank_k": 1.5}):
        with pytest.raises(ConfigError, match="must be an integer >= 1"):
            SearchConfig(**bad)
    pipe = SearchPipeline(retriever, reranker, retrieve_k=10, rerank_k=10, top_n=3)
    with pytest.raises(ConfigError):
        pipe.search("東京", rerank_k=11)
    with pytest.raises(ConfigError, match="non-empty"):
        pipe.search("   ")
    assert len(pipe.search("東京", top_n=2).hits) == 2  # per-call override


def test_batch_equals_single(index_path, reranker):
    with tansaku.open(index_path, reranker=reranker, retrieve_k=20, rerank_k=10, top_n=4) as idx:
        queries = ["寿司", "how does a search engine rank documents", "富士山の高さ"]
        batch = idx.search_batch(queries)
        for q, res in zip(queries, batch, strict=True):
            single = idx.search(q)
            assert [h.doc_id for h in res.hits] == [h.doc_id for h in single.hits]
            np.testing.assert_allclose([h.score for h in res.hits], [h.score for h in single.hits], atol=1e-6)


def test_unloadable_reranker_is_an_error_not_a_silent_skip(index_path, tmp_path):
    with tansaku.open(index_path, reranker=str(tmp_path / "missing")) as idx:
        with pytest.raises(ModelLoadError, match="does not exist"):
            idx.search("東京")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_search_with_reranker_and_rerank_command(index_path, tiny_bert_reranker_dir):
    proc = run_cli(
        "search",
        index_path,
        "東京の電波塔",
        "--reranker",
        tiny_bert_reranker_dir,
        "--retrieve-k",
        "30",
        "--rerank-k",
        "10",
        "--top-n",
        "3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["hits"]) == 3 and out["hits"][0]["stage"] == "rerank"
    # Only documents sharing a term are retrieved (the ja analyzer drops the particle の).
    assert out["counts"]["reranked"] == min(10, out["counts"]["retrieved"]) > 3
    assert "rerank" in out["timings_ms"]
    proc = run_cli(
        "rerank",
        "--model",
        tiny_bert_reranker_dir,
        "富士山の高さ",
        "富士山は3776m",
        "東京の人口",
        "寿司",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)["results"]
    assert sorted(r["index"] for r in res) == [0, 1, 2]
    direct = CrossEncoderReranker(tiny_bert_reranker_dir).score(
        [("富士山の高さ", d) for d in ("富士山は3776m", "東京の人口", "寿司")]
    )
    assert [r["index"] for r in res] == list(np.argsort(-direct, kind="stable"))
    proc = run_cli("search", index_path, "東京", "--reranker", "no-org/no-model")
    assert proc.returncode == 2 and "no-org/no-model" in proc.stderr and "--reranker DIR" in proc.stderr
    proc = run_cli(
        "search",
        index_path,
        "東京",
        "--retrieve-k",
        "5",
        "--rerank-k",
        "9",
        "--reranker",
        tiny_bert_reranker_dir,
    )
    assert proc.returncode == 2 and "cannot exceed retrieve_k" in proc.stderr

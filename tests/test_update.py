"""Incremental add/delete: an updated index scores like a fresh build of the same corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import faiss
import numpy as np
import pytest

import tansaku
from helpers import sample_rows, tree_snapshot, write_jsonl
from tansaku.index import BuildConfig, FaissParams, Index, IngestError, build_index, read_dicts
from tansaku.index.update import update_index
from tansaku.retrieve import BM25Retriever, DenseRetriever

QUERIES = [
    "東京の電波塔",
    "寿司",
    "富士山の高さ",
    "how does a search engine rank documents",
    "日本の祭り",
    "新しい説明",
]


def final_corpus(rows, new, deleted):
    """The corpus a fresh build would see: kept rows in place (replaced ones keep their
    position, as SQLite rowids do), then the new ids."""
    by_id = {r["id"]: r for r in rows}
    order = [r["id"] for r in rows]
    for r in new:
        if r["id"] not in by_id:
            order.append(r["id"])
        by_id[r["id"]] = r
    return [by_id[i] for i in order if i not in deleted]


def assert_same_search(a: Index, b: Index):
    assert list(a.doc_ids) == list(b.doc_ids)
    for q in QUERIES:
        tokens = a.analyzer.tokenize(q)
        np.testing.assert_allclose(a.bm25.get_scores(tokens), b.bm25.get_scores(tokens), rtol=0, atol=1e-6)
        ha, hb = BM25Retriever(a).retrieve(q, 20), BM25Retriever(b).retrieve(q, 20)
        assert [h.doc_id for h in ha] == [h.doc_id for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6)
        if a.dense is not None:
            da, db = DenseRetriever(a).retrieve(q, 10), DenseRetriever(b).retrieve(q, 10)
            assert [h.doc_id for h in da] == [h.doc_id for h in db]
            np.testing.assert_allclose([h.score for h in da], [h.score for h in db], atol=1e-5)


@pytest.mark.parametrize("faiss_kind", ["flat", "ivfpq"])
def test_update_equals_fresh_build(tmp_path, tiny_bi_encoder_dir, faiss_kind):
    rows = sample_rows()
    params = (
        FaissParams(kind=faiss_kind, nlist=2, m=8, nbits=4, nprobe=2, rescore=0)
        if faiss_kind == "ivfpq"
        else FaissParams()
    )
    config = BuildConfig(encoder=str(tiny_bi_encoder_dir), faiss=params)
    build_index(tmp_path / "u", read_dicts(rows[:40]), config, progress=False).close()
    trained = Index.open(tmp_path / "u").dense
    new = rows[40:] + [dict(rows[3], text="東京スカイツリーの新しい説明。電波塔です。")]
    report = update_index(tmp_path / "u", read_dicts(new), ["ja-010", "ja-011"], progress=False)
    assert (report.added, report.replaced, report.deleted, report.docs) == (16, 1, 2, 54)
    updated = Index.open(tmp_path / "u")
    assert {"ja-010", "ja-011"}.isdisjoint(updated.doc_ids)
    assert updated.corpus.get("ja-010") is None
    assert updated.corpus.get("ja-004").text.startswith("東京スカイツリーの新しい説明")
    assert updated.manifest.updates[-1].deleted == 2
    expected = final_corpus(rows[:40], new, {"ja-010", "ja-011"})
    if faiss_kind == "flat":
        fresh = build_index(tmp_path / "fresh", read_dicts(expected), config, progress=False)
        assert_same_search(updated, fresh)
    else:
        # FAISS adds without retraining: the coarse quantizer and codebooks are the old ones.
        assert updated.dense.params.kind == "ivfpq" and updated.dense.ntotal == 54
        np.testing.assert_array_equal(
            faiss.vector_to_array(updated.dense.index.pq.centroids),
            faiss.vector_to_array(trained.index.pq.centroids),
        )
        fresh = build_index(tmp_path / "fresh", read_dicts(expected), progress=False)
        for q in QUERIES:  # BM25 equals a fresh build; dense never returns deleted docs
            tokens = updated.analyzer.tokenize(q)
            np.testing.assert_allclose(
                updated.bm25.get_scores(tokens), fresh.bm25.get_scores(tokens), atol=1e-6
            )
            hits = DenseRetriever(updated).retrieve(q, 54)
            assert len(hits) == 54 and not {"ja-010", "ja-011"} & {h.doc_id for h in hits}


def test_bad_update_changes_nothing(tmp_path):
    build_index(tmp_path / "u", read_dicts(sample_rows()[:10]), progress=False).close()
    before = tree_snapshot(tmp_path / "u")
    with pytest.raises(IngestError, match="record 2, field 'text'"):
        update_index(tmp_path / "u", read_dicts([{"id": "n1", "text": "ok"}, {"id": "n2"}]), progress=False)
    with pytest.raises(IngestError, match="unknown ids: 'nope'"):
        update_index(tmp_path / "u", (), ["ja-001", "nope"], progress=False)
    with pytest.raises(IngestError, match="cannot delete every document"):
        update_index(tmp_path / "u", (), [r["id"] for r in sample_rows()[:10]], progress=False)
    assert tree_snapshot(tmp_path / "u") == before
    report = update_index(tmp_path / "u", (), ["ja-001", "nope"], missing_ok=True, progress=False)
    assert report.deleted == 1 and report.docs == 9


def test_readers_keep_working_during_updates(tmp_path):
    rows = sample_rows()
    build_index(tmp_path / "u", read_dicts(rows[:30]), progress=False).close()
    errors: list[BaseException] = []
    seen_sizes: set[int] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                index = Index.open(tmp_path / "u")
                hits = BM25Retriever(index).retrieve("東京", 50)
                index.hydrate(hits)  # the corpus must match the matrices it came with
                seen_sizes.add(len(index))
                index.close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30, 56, 2):
        update_index(tmp_path / "u", read_dicts(rows[i : i + 2]), progress=False)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(Index.open(tmp_path / "u")) == 56
    assert seen_sizes <= set(range(30, 57, 2)) and len(seen_sizes) >= 2


def test_open_searcher_sees_updates(tmp_path):
    rows = sample_rows()
    build_index(tmp_path / "u", read_dicts(rows[:50]), progress=False).close()
    searcher = tansaku.open(tmp_path / "u", top_n=56)
    assert "en-001" not in {h.doc_id for h in searcher.search("Mount Fuji").hits}
    update_index(tmp_path / "u", read_dicts(rows[50:]), progress=False)
    assert searcher.search("Mount Fuji").hits[0].doc_id == "en-001"
    update_index(tmp_path / "u", (), ["en-001"], progress=False)
    assert "en-001" not in {h.doc_id for h in searcher.search("Mount Fuji").hits}


@pytest.mark.slow
def test_cli_add_and_delete(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    rows = sample_rows()
    assert (
        cli(
            "build", tmp_path / "i", write_jsonl(tmp_path / "a.jsonl", rows[:50]), "--encoder", "none", "-q"
        ).returncode
        == 0
    )
    out = cli("add", tmp_path / "i", write_jsonl(tmp_path / "b.jsonl", rows[50:]), "--json", "-q")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) | {"seconds": 0} == {
        "added": 6,
        "replaced": 0,
        "deleted": 0,
        "docs": 56,
        "seconds": 0,
    }
    out = cli("delete", tmp_path / "i", "--ids", "en-001", "en-002", "--json", "-q")
    assert json.loads(out.stdout)["deleted"] == 2
    bad = cli("delete", tmp_path / "i", "--ids", "en-001")
    assert bad.returncode == 2 and "unknown ids: 'en-001'" in bad.stderr
    res = json.loads(cli("search", tmp_path / "i", "Mount Fuji", "--json").stdout)
    assert "en-001" not in {h["id"] for h in res["hits"]}

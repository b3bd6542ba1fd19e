"""Building index directories: manifest, atomic swap, locks, retrieval modes, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import sample_rows, tree_snapshot, write_jsonl
from tansaku.index import (
    SAMPLE_CORPUS,
    BuildConfig,
    FaissParams,
    Index,
    IndexFormatError,
    IngestError,
    ModelLoadError,
    build_index,
    read_dicts,
    read_file,
)
from tansaku.index.atomic import write_lock
from tansaku.index.build_config import PRESET_BM25
from tansaku.index.manifest import FORMAT_VERSION, MIN_FORMAT_VERSION
from tansaku.retrieve import (
    BM25Retriever,
    ConfigError,
    DenseRetriever,
    FusionConfig,
    HybridRetriever,
    default_weights,
    make_retriever,
)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


def tansaku(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tansaku {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory, tiny_bi_encoder_dir):
    path = tmp_path_factory.mktemp("idx") / "sample"
    config = BuildConfig(
        encoder=str(tiny_bi_encoder_dir), query_prefix="query: ", document_prefix="passage: "
    )
    return build_index(path, read_file(SAMPLE_CORPUS), config, progress=False)


def test_directory_layout_and_manifest(sample_index):
    path = sample_index.path
    names = {p.name for p in path.iterdir()}
    assert {"manifest.json", "corpus.sqlite", "ids.npy", "bm25", "dense"} <= names
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert m["format_version"] == FORMAT_VERSION and m["counts"]["docs"] == 56
    assert m["analyzer"]["name"] == "ja" and m["analyzer"]["ngram"]["n"] == 2
    tuned = PRESET_BM25["ja"]  # the default analyzer's k1/b are recorded
    assert (m["bm25"]["params"]["k1"], m["bm25"]["params"]["b"]) == (tuned.k1, tuned.b)
    assert m["versions"]["faiss-cpu"] and m["versions"]["fugashi"]
    assert m["dense"]["faiss"]["kind"] == "flat" and "needed to train" in m["dense"]["reason"]
    assert m["dense"]["encoder"]["query_prefix"] == "query: "
    assert set(m["build"]["seconds"]) >= {"ingest", "tokenize+bm25", "encode", "faiss"}
    assert not list(path.parent.glob(".sample.tmp-*"))  # temp dir swapped in, none left
    ids = np.load(path / "ids.npy", allow_pickle=False)
    assert list(ids[:2]) == ["ja-001", "ja-002"] and len(ids) == 56


def test_open_round_trip_equals_built(sample_index):
    reopened = Index.open(sample_index.path)
    for q in ("富士山の高さ", "how does a search engine rank documents"):
        a = BM25Retriever(sample_index).retrieve(q, 10)
        b = BM25Retriever(reopened).retrieve(q, 10)
        assert a == b and a
        da = DenseRetriever(sample_index).retrieve(q, 10)
        db = DenseRetriever(reopened).retrieve(q, 10)  # encoder reloaded from the manifest
        assert [h.doc_id for h in da] == [h.doc_id for h in db]
        np.testing.assert_allclose([h.score for h in da], [h.score for h in db], atol=1e-5)


def test_retrievers_rank_and_fuse(sample_index):
    bm25 = BM25Retriever(sample_index).retrieve("検索エンジンの仕組み", 100)
    assert bm25[0].doc_id == "ja-023" and bm25[0].stage == "bm25"
    assert [h.rank for h in bm25] == list(range(1, len(bm25) + 1))
    dense = DenseRetriever(sample_index).retrieve("検索エンジンの仕組み", 100)
    assert len(dense) == 56 and all(-1.0001 <= h.score <= 1.0001 for h in dense)
    rrf_retriever = make_retriever(sample_index, "hybrid", fusion=FusionConfig(method="rrf"))
    rrf = rrf_retriever.retrieve("検索エンジンの仕組み", 100)
    assert rrf[0].stage == "hybrid" and len(rrf) == 56
    # RRF score of each doc = sum of 1/(60 + rank) over the lists containing it.
    ranks = [{h.doc_id: h.rank for h in lst} for lst in (bm25, dense)]
    for hit in rrf[:10]:
        expected = sum(1 / (60 + r[hit.doc_id]) for r in ranks if hit.doc_id in r)
        assert hit.score == pytest.approx(expected)
    fused = HybridRetriever(
        [BM25Retriever(sample_index), DenseRetriever(sample_index)],
        FusionConfig(method="score", weights=(1.0, 0.0)),
    )
    # Min-max scales BM25's last hit to 0, where it ties with dense-only documents: compare
    # the hits above it.
    top = min(5, len(bm25) - 1)
    assert [h.doc_id for h in fused.retrieve("検索エンジンの仕組み", top)] == [h.doc_id for h in bm25[:top]]
    # The default hybrid: min-max score fusion with the encoder type's dense weight.
    encoder_type = sample_index.manifest.dense.encoder["type"]
    weights = default_weights(encoder_type)
    assert encoder_type == "sentence-transformers" and weights == pytest.approx((0.65, 0.35))
    default = make_retriever(sample_index, "hybrid").retrieve("検索エンジンの仕組み", 10)
    norm = [
        {h.doc_id: (h.score - lst[-1].score) / (lst[0].score - lst[-1].score) for h in lst}
        for lst in (bm25, dense)
    ]
    for hit in default:
        assert hit.score == pytest.approx(
            sum(w * n.get(hit.doc_id, 0.0) for w, n in zip(weights, norm, strict=True))
        )
    assert default_weights("corpus") == pytest.approx((0.85, 0.15))
    batch = make_retriever(sample_index, "hybrid").retrieve_batch(["東京", "寿司"], 5)
    assert [[h.doc_id for h in b] for b in batch] == [
        [h.doc_id for h in make_retriever(sample_index, "hybrid").retrieve(q, 5)] for q in ("東京", "寿司")
    ]
    with pytest.raises(ConfigError, match="unknown search mode"):
        make_retriever(sample_index, "fuzzy")
    with pytest.raises(ConfigError, match="k must be"):
        BM25Retriever(sample_index).retrieve("東京", 0)


def test_bm25_only_index_refuses_dense(tmp_path):
    index = build_index(tmp_path / "b", read_dicts(sample_rows()[:5]), progress=False)
    assert index.dense is None and index.manifest.dense is None
    with pytest.raises(ConfigError, match="no dense index"):
        DenseRetriever(index)


def test_failed_rebuild_leaves_previous_index(tmp_path):
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()[:10]), progress=False)
    before = tree_snapshot(path)
    bad = sample_rows()[:20] + [{"id": "broken", "title": "no text"}]
    with pytest.raises(IngestError, match="record 21"):
        build_index(path, read_dicts(bad), progress=False)
    with pytest.raises(ModelLoadError):
        build_index(
            path, read_dicts(sample_rows()), BuildConfig(encoder=str(tmp_path / "nope")), progress=False
        )
    assert tree_snapshot(path) == before
    assert len(Index.open(path)) == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.tmp")] == []


def test_failure_during_faiss_keeps_old_index(tmp_path, tiny_bi_encoder_dir):
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()[:10]), progress=False)
    before = tree_snapshot(path)
    config = BuildConfig(encoder=str(tiny_bi_encoder_dir), faiss=FaissParams(kind="ivfpq", m=7))
    with pytest.raises(ConfigError, match="must divide"):
        build_index(path, read_dicts(sample_rows()), config, progress=False)
    assert tree_snapshot(path) == before


def test_rebuild_replaces_and_stale_temp_dirs_are_cleaned(tmp_path):
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()[:10]), progress=False)
    stale = tmp_path / ".idx.tmp-999999999-deadbeef"  # a crashed build's leftovers (dead pid)
    stale.mkdir()
    (stale / "junk").write_text("x")
    index = build_index(path, read_dicts(sample_rows()[10:15]), progress=False)
    assert len(index) == 5 and index.doc_ids[0] == "ja-011"
    assert not stale.exists()


def test_second_writer_gets_clear_error(tmp_path):
    path = tmp_path / "idx"
    with write_lock(path):
        with pytest.raises(IndexFormatError, match="being written by pid"):
            build_index(path, read_dicts(sample_rows()[:3]), progress=False)


def test_open_errors(tmp_path):
    with pytest.raises(IndexFormatError, match="no index at"):
        Index.open(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexFormatError, match="not a tansaku index"):
        Index.open(tmp_path / "plain")
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()[:3]), progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="Upgrade tansaku"):
        Index.open(path)


def test_cli_build_and_search_json(tmp_path):
    docs = write_jsonl(tmp_path / "docs.jsonl", sample_rows())
    out = tansaku("build", tmp_path / "cli-idx", docs, "--encoder", "none", "--json", "--quiet")
    summary = json.loads(out.stdout)
    assert summary["docs"] == 56 and summary["dense"] is None
    res = json.loads(
        tansaku("search", tmp_path / "cli-idx", "検索エンジンの仕組み", "-k", "100", "--json").stdout
    )
    assert res["mode"] == "bm25" and res["hits"][0]["id"] == "ja-023"
    assert res["hits"][0]["title"] == "検索エンジン" and res["hits"][0]["metadata"]["lang"] == "ja"
    assert 1 < len(res["hits"]) <= 56 and res["timings_ms"]["retrieve"] >= 0
    text = tansaku("search", tmp_path / "cli-idx", "東京", "-k", "2").stdout
    assert "[ja-003] 東京タワー" in text and text.count("\n") == 4  # 2 hits: title + snippet lines


def test_cli_errors_are_clear(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "a", "text": "ok"}', '{"id": "b"}'])
    proc = tansaku("build", tmp_path / "x", bad, "--quiet", check=False)
    assert proc.returncode == 2
    assert "bad.jsonl, line 2, field 'text': missing text" in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = tansaku("search", tmp_path / "x", "q", check=False)
    assert proc.returncode == 2 and "no index at" in proc.stderr
    proc = tansaku("build", tmp_path / "x", "--quiet", check=False)
    assert proc.returncode == 2 and "--sample" in proc.stderr
    help_text = tansaku("build", "--help").stdout
    for option in ("--encoder", "--analyzer", "--id-field", "--faiss", "--nprobe", "--sample"):
        assert option in help_text


@pytest.mark.slow
def test_cli_sample_build_with_dense_and_hybrid(tmp_path, tiny_bi_encoder_dir):
    tansaku("build", tmp_path / "s", "--sample", "--encoder", tiny_bi_encoder_dir, "--quiet")
    res = json.loads(tansaku("search", tmp_path / "s", "東京タワー", "--json").stdout)
    assert res["mode"] == "hybrid" and len(res["hits"]) == 10
    res = json.loads(tansaku("search", tmp_path / "s", "東京タワー", "--mode", "dense", "--json").stdout)
    assert res["mode"] == "dense" and res["hits"][0]["stage"] == "dense"


def test_older_index_format_asks_for_a_rebuild(tmp_path):
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()[:3]), progress=False).close()
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = MIN_FORMAT_VERSION - 1  # older than any this tansaku reads
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 0.*Rebuild it with `tansaku build`"):
        Index.open(path)

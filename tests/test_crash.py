"""Crash safety: a build or update SIGKILLed at any stage leaves the old or the new index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import sample_rows, write_jsonl
from tansaku.index import BuildConfig, build_index, open_index, read_dicts
from tansaku.retrieve import BM25Retriever

BUILD_POINTS = ["ingest", "tokenize", "encode", "faiss", "swap", "swapped"]


def cli(*args, crash_at=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if crash_at:
        env["TANSAKU_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def state(path):
    """Which complete version the index is: its sorted ids (or an exception if unreadable)."""
    index = open_index(path)  # sharded or not
    hits = BM25Retriever(index).retrieve("東京", 10)
    index.hydrate(hits)
    ids = sorted(str(i) for i in index.doc_ids)
    assert sorted(r.id for r in index.corpus.iter_records()) == ids  # corpus matches matrices
    index.close()
    return ids


@pytest.mark.parametrize("point", BUILD_POINTS)
@pytest.mark.slow
def test_rebuild_killed_leaves_a_complete_index(tmp_path, tiny_bi_encoder_dir, point):
    rows = sample_rows()
    path = tmp_path / "idx"
    build_index(path, read_dicts(rows[:20]), progress=False).close()
    old = state(path)
    docs = write_jsonl(tmp_path / "all.jsonl", rows)
    # Only the dense stages need an encoder (loading one costs seconds per run).
    dense = (
        ["--encoder", tiny_bi_encoder_dir, "--batch-size", "8"]
        if point in ("encode", "faiss")
        else ["--encoder", "none"]
    )
    proc = cli("build", path, docs, *dense, "-q", crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # it really died at that point
    now = state(path)
    new = sorted(r["id"] for r in rows)
    assert now in (old, new)
    assert now == (new if point == "swapped" else old)
    # The next build cleans the dead build's leftovers and succeeds.
    assert cli("build", path, docs, "--encoder", "none", "-q").returncode == 0
    assert state(path) == new
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_first_build_killed_leaves_nothing_half_written(tmp_path):
    proc = cli("build", tmp_path / "idx", "--sample", "--encoder", "none", "-q", crash_at="tokenize")
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "idx").exists()
    assert cli("search", tmp_path / "idx", "東京").returncode == 2  # a clear "no index" error


@pytest.mark.parametrize("point", ["update", "swap", "swapped"])
def test_update_killed_leaves_old_or_new(tmp_path, point):
    rows = sample_rows()
    path = tmp_path / "idx"
    build_index(path, read_dicts(rows[:40]), progress=False).close()
    old = state(path)
    proc = cli("add", path, write_jsonl(tmp_path / "new.jsonl", rows[40:]), "-q", crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    now = state(path)
    assert now == (sorted(r["id"] for r in rows) if point == "swapped" else old)
    out = cli("add", path, tmp_path / "new.jsonl", "-q", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["docs"] == 56


@pytest.mark.slow
@pytest.mark.parametrize(
    ("action", "point"),
    [("build", "ingest"), ("build", "shard"), ("build", "swap"), ("add", "update"), ("add", "swapped")],
)
def test_sharded_build_or_update_killed_leaves_old_or_new(tmp_path, action, point):
    rows = sample_rows()
    path = tmp_path / "idx"
    build_index(path, read_dicts(rows[:30]), BuildConfig(shard_docs=10), progress=False).close()
    old = state(path)
    docs = write_jsonl(tmp_path / "more.jsonl", rows[30:] if action == "add" else rows)
    extra = ["--encoder", "none", "--shards", "3"] if action == "build" else []
    proc = cli(action, path, docs, *extra, "-q", crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    new = sorted(r["id"] for r in rows)
    assert state(path) == (new if point == "swapped" else old)
    assert (
        cli("build", path, tmp_path / "more.jsonl", "--encoder", "none", "--shards", "2", "-q").returncode
        == 0
    )
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []

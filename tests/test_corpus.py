"""The SQLite corpus: upsert by id, all-or-nothing ingest."""

from __future__ import annotations

import sqlite3

import pytest

from tansaku.index import Corpus, IngestError, read_dicts


def test_upsert_replaces_and_keeps_order(tmp_path):
    corpus = Corpus(tmp_path / "c.sqlite")
    corpus.ingest(
        read_dicts([{"id": "a", "text": "one"}, {"id": "b", "text": "two", "k": 1}]), progress=False
    )
    corpus.ingest(
        read_dicts([{"id": "a", "text": "uno", "title": "A"}, {"id": "c", "text": "three"}]), progress=False
    )
    assert len(corpus) == 3
    recs = list(corpus.iter_records())
    assert [(r.id, r.text) for r in recs] == [("a", "uno"), ("b", "two"), ("c", "three")]
    assert recs[0].title == "A" and recs[1].metadata == {"k": 1}
    assert corpus.get("zzz") is None and corpus.get("b").text == "two"
    # A real sqlite file with the documented schema.
    cols = {r[1]: r[2] for r in sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA table_info(docs)")}
    assert cols == {"id": "TEXT", "title": "TEXT", "text": "TEXT", "metadata": "TEXT"}


def test_failed_ingest_leaves_database_unchanged(tmp_path):
    corpus = Corpus(tmp_path / "c.sqlite")
    corpus.ingest(read_dicts([{"id": "a", "text": "keep me"}]), progress=False)
    before = list(corpus.iter_records())
    rows = [{"id": f"n{i}", "text": f"new {i}"} for i in range(2500)] + [{"id": "bad"}]
    with pytest.raises(IngestError, match="record 2501"):
        corpus.ingest(read_dicts(rows), batch_size=1000, progress=False)
    assert list(corpus.iter_records()) == before
    with pytest.raises(IngestError, match="duplicate id 'a'"):
        corpus.ingest(read_dicts([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]), progress=False)
    assert list(corpus.iter_records()) == before
    corpus.close()
    # ...and nothing is left uncommitted on disk either.
    assert Corpus(tmp_path / "c.sqlite", readonly=True).get_many(["a", "n0"]).keys() == {"a"}

"""Sharded indexes answer exactly as the same corpus built as one index: ids, order, scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tansaku
from helpers import sample_rows, tree_snapshot, write_jsonl
from tansaku.index import (
    BuildConfig,
    ConfigError,
    Index,
    IndexFormatError,
    IngestError,
    ShardedIndex,
    build_index,
    open_index,
    read_dicts,
    read_file,
)
from tansaku.index.shard_builder import shard_sizes
from tansaku.index.update import update_index
from tansaku.pipeline.cli import main
from tansaku.retrieve import BM25Retriever, DenseRetriever, make_retriever

ROWS = sample_rows()
QUERIES = [r["title"] for r in ROWS] + [r["text"][:30] for r in ROWS[::3]] + ["東京 の 電波塔", "Mount Fuji"]


def build_pair(tmp_path, analyzer: str, encoder: str | None = None, **shards: int):
    one = build_index(
        tmp_path / "one", read_dicts(ROWS), BuildConfig(analyzer=analyzer, encoder=encoder), progress=False
    )
    many = build_index(
        tmp_path / "many",
        read_dicts(ROWS),
        BuildConfig(analyzer=analyzer, encoder=encoder, **shards),
        progress=False,
    )
    return one, many


def same_hits(a, b) -> None:
    assert [h.doc_id for h in a] == [h.doc_id for h in b]
    assert [h.score for h in a] == [h.score for h in b]  # exactly, not approximately


@pytest.mark.parametrize("analyzer", ["ja", "ja-surface"])
def test_bm25_over_shards_equals_one_index(tmp_path, analyzer):
    one, many = build_pair(tmp_path, analyzer, shards=3)
    assert isinstance(one, Index) and isinstance(many, ShardedIndex)
    assert len(many.shards) == 3 and len(many) == len(one) == len(ROWS)
    assert list(many.doc_ids) == list(one.doc_ids)
    a, b = BM25Retriever(one), BM25Retriever(many)
    for query in QUERIES:
        same_hits(a.retrieve(query, 100), b.retrieve(query, 100))
        same_hits(a.retrieve(query, 3), b.retrieve(query, 3))
    for x, y in zip(a.retrieve_batch(QUERIES, 20), b.retrieve_batch(QUERIES, 20), strict=True):
        same_hits(x, y)
    # filters decide on the whole corpus and answer the same
    for where in ({"lang": "en"}, {"lang": "ja"}):
        for query in QUERIES[:20]:
            same_hits(a.retrieve(query, 50, filter=where), b.retrieve(query, 50, filter=where))


def test_shard_statistics_are_the_corpus_statistics(tmp_path):
    one, many = build_pair(tmp_path, "ja-surface", shard_docs=20)
    assert [s.count for s in many.manifest.shards] == [20, 20, 16]
    assert many.stats.n_docs == len(one) and many.stats.vocab == tuple(one.bm25.vocab)
    assert np.array_equal(many.stats.df, np.diff(one.bm25.indptr))
    assert many.manifest.format_version == 2 and many.manifest.generation == 1
    # each shard holds only its own terms, weighed with the global idf: scores differ from
    # a shard built on its own (which is what makes per-shard statistics rank differently)
    alone = build_index(
        tmp_path / "alone", read_dicts(ROWS[:20]), BuildConfig(analyzer="ja-surface"), progress=False
    )
    q = alone.analyzer.tokenize("東京タワー")
    assert not np.array_equal(alone.bm25.top_k(q, 5)[1], many.bm25.shards[0].top_k(q, 5)[1])


def test_dense_and_hybrid_over_shards_equal_one_index(tmp_path, tiny_bi_encoder_dir):
    one, many = build_pair(tmp_path, "ja", encoder=str(tiny_bi_encoder_dir), shards=4)
    assert many.dense is not None and len(many.dense.shards) == 4
    for mode in ("dense", "hybrid"):
        a, b = make_retriever(one, mode), make_retriever(many, mode)
        for query in QUERIES[:30]:
            same_hits(a.retrieve(query, 25), b.retrieve(query, 25))
            same_hits(
                a.retrieve(query, 10, filter={"lang": "ja"}), b.retrieve(query, 10, filter={"lang": "ja"})
            )
    assert isinstance(make_retriever(many, "dense"), DenseRetriever)


def test_search_api_and_cli_on_a_sharded_index(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", ROWS)
    for name, extra in (("one", []), ("many", ["--shards", "5"])):
        assert main(["build", str(tmp_path / name), str(docs), "--encoder", "none", "-q", *extra]) == 0
    capsys.readouterr()
    outputs = []
    for name in ("one", "many"):
        assert main(["search", str(tmp_path / name), "富士山の高さ", "-k", "20", "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["hits"])
    assert outputs[0] == outputs[1] and outputs[0][0]["title"]  # hydrated from the shards
    with tansaku.open(tmp_path / "many") as searcher:
        res = searcher.search("富士山の高さ", top_n=20)
        assert [h.doc_id for h in res.hits] == [h["id"] for h in outputs[1]]
    assert isinstance(open_index(tmp_path / "many"), ShardedIndex)


def test_sharded_build_is_atomic_and_checks_input(tmp_path):
    path = tmp_path / "idx"
    build_index(path, read_dicts(ROWS[:10]), BuildConfig(shards=2), progress=False).close()
    before = tree_snapshot(path)
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"id": "x"}])
    with pytest.raises(IngestError, match="bad.jsonl, line 2, field 'text'"):
        build_index(path, read_file(bad), BuildConfig(shards=2), progress=False)
    dup = write_jsonl(tmp_path / "dup.jsonl", ROWS[:3] + ROWS[:1])
    with pytest.raises(IngestError, match="duplicate id"):  # caught across shards
        build_index(path, read_file(dup), BuildConfig(shard_docs=2), progress=False)
    assert tree_snapshot(path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.tmp")]
    # a sharded index is an index: rebuilt over in either direction
    assert isinstance(build_index(path, read_dicts(ROWS[:4]), progress=False), Index)
    assert isinstance(
        build_index(path, read_dicts(ROWS[:4]), BuildConfig(shards=2), progress=False), ShardedIndex
    )


def test_updates_of_a_sharded_index_say_so(tmp_path):
    path = tmp_path / "idx"
    build_index(path, read_dicts(ROWS[:6]), BuildConfig(shards=2), progress=False).close()
    with pytest.raises(IndexFormatError, match="sharded.*not supported yet"):
        update_index(path, read_dicts(ROWS[6:7]), progress=False)
    assert len(open_index(path)) == 6


def test_shard_sizes_and_config():
    assert shard_sizes(10, 3, None) == [4, 3, 3]
    assert shard_sizes(10, None, 4) == [4, 4, 2]
    assert shard_sizes(2, 5, None) == [1, 1]  # never an empty shard
    for bad in ({"shards": 0}, {"shard_docs": -1}, {"shards": 2, "shard_docs": 3}):
        with pytest.raises(ConfigError):
            BuildConfig(**bad)

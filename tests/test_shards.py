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


def close_hits(a, b) -> None:
    # After updates the two indexes encoded their new documents in different batches (float32
    # vectors may differ in the last bit) and appended new terms in a different order (the
    # idf floor's mean is summed in another order): equal to rounding, like a fresh build.
    assert [h.doc_id for h in a] == [h.doc_id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=0, atol=1e-6)


def test_updates_reach_the_right_shards_and_match_one_index(tmp_path, tiny_bi_encoder_dir):
    encoder = str(tiny_bi_encoder_dir)
    one = tmp_path / "one"
    many = tmp_path / "many"
    build_index(one, read_dicts(ROWS[:30]), BuildConfig(encoder=encoder), progress=False).close()
    build_index(
        many, read_dicts(ROWS[:30]), BuildConfig(encoder=encoder, shard_docs=12), progress=False
    ).close()
    before = open_index(many)
    untouched = tree_snapshot(many / before.manifest.shards[1].dir)
    changed = dict(ROWS[2], text="富士山は日本で一番高い山で、標高は3776メートルである。")
    steps = [  # a replacement in shard 0 and 10 new; two deletions; 16 new (new shards)
        lambda path: update_index(path, read_dicts([changed] + ROWS[30:40]), progress=False),
        lambda path: update_index(path, delete=[ROWS[5]["id"], ROWS[31]["id"]], progress=False),
        lambda path: update_index(path, read_dicts(ROWS[40:56]), progress=False),
    ]
    for step in steps:
        for path in (one, many):
            step(path)
    a, b = open_index(one), open_index(many)
    assert isinstance(b, ShardedIndex) and list(a.doc_ids) == list(b.doc_ids)
    assert b.manifest.generation == 4 and b.stats.n_docs == len(a)
    assert [s.count for s in b.manifest.shards] == [11, 12, 11, 12, 8]  # capacity 12
    for mode in ("bm25", "dense", "hybrid"):
        ra, rb = make_retriever(a, mode), make_retriever(b, mode)
        for query in QUERIES[:25] + ["富士山の標高"]:
            close_hits(ra.retrieve(query, 30), rb.retrieve(query, 30))
    # the shard nothing touched kept its corpus and vectors; only its BM25 weights changed
    assert tree_snapshot(many / b.manifest.shards[1].dir)["corpus.sqlite"] == untouched["corpus.sqlite"]
    with pytest.raises(IngestError, match="unknown ids: 'nope'"):
        update_index(many, delete=["nope"], progress=False)
    assert open_index(many).manifest.generation == 4


def test_a_build_over_its_memory_budget_shards_itself(tmp_path, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", ROWS)
    assert main(["build", str(tmp_path / "one"), str(docs), "--encoder", "none", "-q"]) == 0
    # a budget just under this corpus's estimate (the interpreter's 300 MiB and 24 bytes a
    # character): the build shards by itself and says why
    budget = ["--memory-budget", "300.1M"]
    assert main(["build", str(tmp_path / "auto"), str(docs), "--encoder", "none", *budget]) == 0
    err = capsys.readouterr().err
    assert "shards:" in err and "memory budget" in err
    one, auto = open_index(tmp_path / "one"), open_index(tmp_path / "auto")
    assert isinstance(one, Index) and isinstance(auto, ShardedIndex) and len(auto.shards) > 1
    for query in QUERIES[:20]:
        same_hits(BM25Retriever(one).retrieve(query, 30), BM25Retriever(auto).retrieve(query, 30))
    with pytest.raises(SystemExit):  # argparse: "not a size"
        main(["build", str(tmp_path / "x"), str(docs), "--memory-budget", "lots"])
    assert "not a size" in capsys.readouterr().err


def test_shard_sizes_and_config():
    assert shard_sizes(10, 3, None) == [4, 3, 3]
    assert shard_sizes(10, None, 4) == [4, 4, 2]
    assert shard_sizes(2, 5, None) == [1, 1]  # never an empty shard
    for bad in ({"shards": 0}, {"shard_docs": -1}, {"shards": 2, "shard_docs": 3}):
        with pytest.raises(ConfigError):
            BuildConfig(**bad)

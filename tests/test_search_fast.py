"""The fast layers above the BM25 kernel answer exactly as the straightforward code they replace.

Retrievers build hits without the dataclass __init__ and fetch ids with one numpy gather;
hydration reads all hits' rows in one query (per shard holding hits); ``Searcher.search``
without a reranker defers that query until a field is first read. Each is compared here with
the plain version (one ``Hit(...)`` per hit, ``corpus.get_many`` + ``hit.replace``) on a small
index, single and sharded.
"""

from __future__ import annotations

import copy
import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from typing import Any

import pytest

import tansaku
from helpers import sample_rows
from tansaku.index import BuildConfig, ConfigError, ShardedIndex, build_index, open_index, read_dicts
from tansaku.index.hit import Hit, ranked_hits, with_fields
from tansaku.retrieve import BM25Retriever

ROWS = sample_rows()
QUERIES = (
    [r["title"] for r in ROWS[::4]] + [r["text"][:30] for r in ROWS[::7]] + ["東京 の 電波塔", "Mount Fuji"]
)


@pytest.fixture(scope="module", params=["one", "sharded"])
def index_dir(request, tmp_path_factory):
    """The sample corpus as one index or three shards ("ja": its weighted n-gram stream too)."""
    shards = {"shards": 3} if request.param == "sharded" else {}
    path = tmp_path_factory.mktemp(request.param) / "idx"
    build_index(path, read_dicts(ROWS), BuildConfig(analyzer="ja", **shards), progress=False).close()
    return path


@pytest.fixture
def index(index_dir):
    idx = open_index(index_dir)
    yield idx
    idx.close()


def plain_hits(index, query: str, k: int) -> list[Hit]:
    """What BM25Retriever.retrieve did: the kernel's positions, one Hit(...) and one id at a time."""
    analyzer = index.analyzer
    positions, scores = index.bm25.top_k(
        analyzer.tokenize(query), k, weight=getattr(analyzer, "term_weight", None)
    )
    return [
        Hit(str(index.doc_ids[int(p)]), float(s), rank, "bm25")
        for rank, (p, s) in enumerate(zip(positions, scores, strict=True), 1)
    ]


def plain_hydrate(index, hits: list[Hit]) -> list[Hit]:
    """What Index.hydrate did: Records from get_many, then hit.replace."""
    records = index.corpus.get_many([h.doc_id for h in hits])
    return [
        hit
        if (rec := records.get(hit.doc_id)) is None
        else hit.replace(title=rec.title, text=rec.text, metadata=dict(rec.metadata))
        for hit in hits
    ]


def state(hits: list[Hit]) -> list[list[tuple[str, Any]]]:
    """Every field of every hit, in instance-dict order, metadata included (== leaves it out)."""
    return [list(vars(h).items()) for h in hits]


def same(fast: list[Hit], plain: list[Hit]) -> None:
    assert all(type(h) is Hit for h in fast)
    assert fast == plain
    assert [h.to_dict() for h in fast] == [h.to_dict() for h in plain]
    assert state(fast) == state(plain)
    assert [repr(h) for h in fast] == [repr(h) for h in plain]


def corpus_queries(index) -> list[str]:
    """A list that records every SQL statement run on the index's corpus (or its shards')."""
    seen: list[str] = []
    corpora = [s.corpus for s in index.shards] if isinstance(index, ShardedIndex) else [index.corpus]
    for corpus in corpora:
        corpus.db.conn.set_trace_callback(seen.append)
    return seen


def shards_holding(index, hits: list[Hit]) -> int:
    if not isinstance(index, ShardedIndex):
        return 1
    ids = {h.doc_id for h in hits}
    return sum(bool(ids & set(s.doc_ids.tolist())) for s in index.shards)


def test_fast_hit_building_matches_the_dataclass():
    assert list(vars(Hit("a", 1.0, 1, "s"))) == [f.name for f in fields(Hit)]
    built = ranked_hits(["a", "b"], [2.5, 1.0], "bm25")
    same(built, [Hit("a", 2.5, 1, "bm25"), Hit("b", 1.0, 2, "bm25")])
    assert built[0].metadata is not built[1].metadata  # a fresh dict each, as default_factory
    full = Hit("x", 0.5, 3, "dense", title="t", text="本文", metadata={"k": 1})
    for hit in (Hit("x", 0.5, 3, "dense"), full):
        filled = with_fields(hit, "題", "本文2", {"y": 2})
        plain = hit.replace(title="題", text="本文2", metadata={"y": 2})
        same([filled], [plain])
    assert Hit("x", 0.5, 3, "dense").title is None and not hasattr(full, "nope")


def test_retriever_hits_equal_the_plain_ones(index):
    retriever = BM25Retriever(index)
    batch = retriever.retrieve_batch(QUERIES, 100)
    for query, batched in zip(QUERIES, batch, strict=True):
        expected = plain_hits(index, query, 100)
        same(retriever.retrieve(query, 100), expected)
        same(retriever.retrieve_batch([query], 100)[0], expected)
        same(batched, expected)
        same(retriever.retrieve(query, 3), plain_hits(index, query, 3))


def test_hydration_equals_the_plain_one(index):
    hits = plain_hits(index, QUERIES[0], 100)
    extra = [Hit("no-such-id", 1.0, 1, "x", title="kept", text="kept text", metadata={"a": 1})]
    mixed = hits[:5] + extra + hits[:2]  # an unknown id and repeated ones
    for sample in (hits, mixed, []):
        expected = plain_hydrate(index, sample)
        same(index.hydrate(sample), expected)
        same(index.hydrate_lazy(sample), expected)
    lazy = index.hydrate_lazy(mixed)
    lazy[0].metadata["changed"] = True  # each hit its own dict, even for the same document
    assert "changed" not in lazy[-2].metadata and lazy[0] == lazy[-2]


def test_owned_hits_become_lazy_themselves(index):
    """``owned=True``: a retriever's fresh hits are made lazy in place (one object per hit),
    others copied; the result equals the plain hydration, and nothing keeps the hits alive."""
    retriever = BM25Retriever(index)
    expected = plain_hydrate(index, plain_hits(index, QUERIES[0], 100))
    fresh = retriever.retrieve(QUERIES[0], 100)
    lazy = index.hydrate_lazy(fresh, owned=True)
    assert all(a is b for a, b in zip(lazy, fresh, strict=True))
    same(lazy, expected)
    extra = Hit("no-such-id", 1.0, 1, "x", title="kept", text="kept text", metadata={"a": 1})
    head = retriever.retrieve(QUERIES[0], 5)
    mixed = [*head, extra, Hit("no-such-id-2", 2.0, 2, "x"), head[0]]
    lazy = index.hydrate_lazy(mixed, owned=True)
    assert lazy[0] is head[0] and lazy[len(head)] is not extra
    plain = plain_hits(index, QUERIES[0], 5)
    same(lazy, plain_hydrate(index, [*plain, *mixed[len(head) : -1], plain[0]]))
    gc.disable()  # no reference cycle: the hits go as soon as the result is dropped
    try:
        probe = weakref.ref(index.hydrate_lazy(retriever.retrieve(QUERIES[1], 10), owned=True)[0])
        assert probe() is None
    finally:
        gc.enable()


def test_search_fetches_text_in_one_query_when_first_read(index_dir):
    with tansaku.open(index_dir) as searcher:
        index = searcher.index
        for query in QUERIES:
            expected = plain_hydrate(index, plain_hits(index, query, 100))
            seen = corpus_queries(index)
            result = searcher.search(query, mode="bm25", top_n=100)
            assert seen == []  # nothing read yet
            assert result.hits[len(result.hits) // 2].text  # the first read fetches them all...
            assert len(seen) == shards_holding(index, result.hits)  # ...in one query per shard
            same(result.hits, expected)
            assert len(seen) == shards_holding(index, result.hits)  # and never again
            eager = searcher.pipeline(mode="bm25", top_n=100).search(query)
            same(eager.hits, expected)
            assert result.to_dict()["hits"] == eager.to_dict()["hits"]
            assert result.candidates == eager.candidates
            assert all(a is b for a, b in zip(result.hits, result.candidates, strict=False))


def test_lazy_hits_outlive_the_index_and_copy(index_dir):
    searcher = tansaku.open(index_dir)
    expected = plain_hydrate(searcher.index, plain_hits(searcher.index, QUERIES[1], 10))
    unread = searcher.search(QUERIES[1], mode="bm25", top_n=10).hits
    copied = copy.copy(unread[0])
    deep = copy.deepcopy(searcher.search(QUERIES[1], mode="bm25", top_n=10).hits)
    searcher.close()  # fetches what is still unread
    same(unread, expected)
    same(deep, expected)
    same([copied], expected[:1])


def test_lazy_hits_read_from_many_threads(index):
    hits = index.hydrate_lazy(plain_hits(index, QUERIES[2], 100))
    seen = corpus_queries(index)
    start = threading.Barrier(8)

    def read(i: int) -> list[str | None]:
        start.wait()
        return [h.text for h in hits[i:] + hits[:i]]

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(read, range(8)))
    assert len(seen) == shards_holding(index, hits)
    assert all(sorted(map(str, t)) == sorted(map(str, texts[0])) for t in texts)
    same(hits, plain_hydrate(index, plain_hits(index, QUERIES[2], 100)))


def test_search_reuses_its_pipeline_only_for_the_same_settings(index_dir):
    with tansaku.open(index_dir, mode="bm25") as searcher:
        assert len(searcher.search(QUERIES[0], top_n=1).hits) == 1
        with pytest.raises(ConfigError, match="top_n"):
            searcher.search(QUERIES[0], top_n=True)  # == 1 as a dict key, yet not a valid top_n
        searcher.config = replace(searcher.config, top_n=2)
        assert len(searcher.search(QUERIES[0]).hits) == 2
        assert searcher.search(QUERIES[0]).hits == searcher.pipeline().search(QUERIES[0]).hits


class RecordsOnly:
    """A corpus proxy with ``get_many`` and no ``rows`` (as a Ray shard replica's)."""

    def __init__(self, corpus) -> None:
        self.corpus = corpus

    def get_many(self, ids):
        return self.corpus.get_many(ids)

    def close(self) -> None:
        self.corpus.close()


def test_hydration_through_a_corpus_without_rows(index):
    hits = plain_hits(index, QUERIES[3], 100)
    expected = plain_hydrate(index, hits)
    if isinstance(index, ShardedIndex):
        for shard in index.shards:
            shard.corpus = RecordsOnly(shard.corpus)
    else:
        index.corpus = RecordsOnly(index.corpus)
    BM25Retriever(index).retrieve(QUERIES[3], 100)  # the sharded index routes these ids
    same(index.hydrate(hits), expected)
    same(index.hydrate_lazy(hits), expected)

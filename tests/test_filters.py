"""Metadata filters: parsing, SQL compilation, masks over positions, and every search stage.

The expected matches come from ``holds`` below, an independent Python reading of the filter
language (not the SQL compiler), applied to the metadata the test itself generated.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import faiss
import httpx
import numpy as np
import pytest

import tansaku
from helpers import sample_rows, write_jsonl
from loopback import LoopbackServers
from tansaku.index import (
    BuildConfig,
    ConfigError,
    DenseIndex,
    FaissParams,
    Filter,
    Index,
    IndexFormatError,
    build_index,
    create_field_index,
    parse_filter,
    read_dicts,
)
from tansaku.index.dense import EXACT_MAX_ALLOWED
from tansaku.index.update import update_index
from tansaku.pipeline import SearchPipeline
from tansaku.pipeline.cli import main as cli_main
from tansaku.pipeline.serve import create_app
from tansaku.retrieve import (
    BM25Retriever,
    DenseRetriever,
    FusionConfig,
    HybridRetriever,
    score_fusion,
)

N_DOCS = 200
QUERIES = ["東京の電波塔", "寿司", "富士山の高さ", "日本の祭り", "search engine", "科学技術の歴史"]
CATEGORIES = ["food", "culture", "science", "sports", "history"]
TAGS = ["a", "b", "c", "d"]
CITIES = ["東京", "大阪", "京都"]


# -- the corpus and an independent oracle --------------------------------------------------------


def make_rows(n: int = N_DOCS, *, seed: int = 7, prefix: str = "d") -> list[dict[str, Any]]:
    """Distinct texts (sample documents mixed, plus a unique token) with varied metadata:
    missing fields, nulls, lists, booleans, floats, a Japanese key, a mistyped year."""
    rng = random.Random(seed)
    base = sample_rows()
    rows = []
    for i in range(n):
        a, b = base[i % len(base)], base[(i * 13 + 5) % len(base)]
        row: dict[str, Any] = {
            "id": f"{prefix}{i:04d}",
            "title": a["title"],
            "text": f"{a['text']} {b['text'][:60]} 第{i}版",
        }
        r = rng.random()
        if r < 0.85:
            row["year"] = rng.randint(2000, 2024)
        elif r < 0.92:
            row["year"] = str(rng.randint(2000, 2024))  # a string: never compares as a number
        row["category"] = rng.choice(CATEGORIES)
        if rng.random() < 0.8:
            row["score"] = round(rng.uniform(0, 10), 2)
        r = rng.random()
        row["tags"] = (
            rng.sample(TAGS, rng.randint(0, 3)) if r < 0.8 else rng.choice(TAGS)
        )  # lists (maybe empty) and scalars
        if rng.random() < 0.7:
            row["flag"] = rng.random() < 0.5
        r = rng.random()
        if r < 0.3:
            row["note"] = None
        elif r < 0.6:
            row["note"] = rng.choice(["x", "y"])
        if rng.random() < 0.5:
            row["名前"] = rng.choice(CITIES)
        rows.append(row)
    return rows


def meta_of(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("id", "title", "text")}


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    return "text" if isinstance(v, str) else "null"


_CMP = {
    "$eq": lambda a, b: a == b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def holds(meta: dict[str, Any], flt: dict[str, Any]) -> bool:
    """The documented semantics, written independently of the SQL compiler."""
    for key, val in flt.items():
        if key == "$and":
            ok = all(holds(meta, f) for f in val)
        elif key == "$or":
            ok = any(holds(meta, f) for f in val)
        elif key == "$not":
            ok = not holds(meta, val)
        else:
            ok = field_holds(meta, key, val if isinstance(val, dict) else {"$eq": val})
        if not ok:
            return False
    return True


def field_holds(meta: dict[str, Any], field: str, ops: dict[str, Any]) -> bool:
    return all(op_holds(meta, field, op, v) for op, v in ops.items())


def op_holds(meta: dict[str, Any], field: str, op: str, value: Any) -> bool:
    present = field in meta
    raw = meta.get(field)
    elems = raw if isinstance(raw, list) else ([raw] if present else [])
    if op == "$exists":
        return present == value
    if op == "$not":
        return not field_holds(meta, field, value)
    if op == "$ne":
        return not op_holds(meta, field, "$eq", value)
    if op == "$nin":
        return not op_holds(meta, field, "$in", value)
    if op == "$in":
        return any(op_holds(meta, field, "$eq", v) for v in value)
    return any(_kind(e) == _kind(value) and _CMP[op](e, value) for e in elems)


DOMAIN: dict[str, list[Any]] = {
    "year": [2000, 2005, 2010, 2012.5, 2015, 2020, 2024, 1999, "2012"],
    "category": [*CATEGORIES, "none", "Food"],
    "score": [0, 2.5, 5, 7.25, 10, 3],
    "tags": [*TAGS, "z"],
    "flag": [True, False],
    "note": ["x", "y", "z"],
    "名前": [*CITIES, "札幌"],
    "absent": [1, "a"],
}


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    r = rng.random()
    if depth < 2 and r < 0.25:
        op = rng.choice(["$and", "$or"])
        return {op: [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if depth < 2 and r < 0.32:
        return {"$not": random_filter(rng, depth + 1)}
    out: dict[str, Any] = {}
    for _ in range(1 if rng.random() < 0.8 else 2):
        field = rng.choice(list(DOMAIN))
        out[field] = random_condition(rng, field)
    return out


def random_condition(rng: random.Random, field: str, depth: int = 0) -> Any:
    value = rng.choice(DOMAIN[field])
    op = rng.choice(
        ["short", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not", "range"]
    )
    if isinstance(value, bool) and op in ("$gt", "$gte", "$lt", "$lte", "range"):
        op = "$eq"
    if op == "short":
        return value
    if op in ("$in", "$nin"):
        return {op: rng.sample(DOMAIN[field], min(len(DOMAIN[field]), rng.randint(0, 3)))}
    if op == "$exists":
        return {op: rng.random() < 0.5}
    if op == "$not":
        inner = random_condition(rng, field, depth + 1) if depth < 1 else {"$eq": value}
        return {"$not": inner if isinstance(inner, dict) else {"$eq": inner}}
    if op == "range":
        nums = [v for v in DOMAIN[field] if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) < 2:
            return {"$eq": value}
        lo, hi = sorted(rng.sample(nums, 2))
        return {"$gte": lo, "$lt": hi}
    return {op: value}


def random_filters(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [random_filter(rng) for _ in range(n)]


def allowed_ids(rows: list[dict[str, Any]], flt: dict[str, Any]) -> set[str]:
    return {r["id"] for r in rows if holds(meta_of(r), flt)}


def mask_ids(index: Index, flt: Any) -> set[str]:
    mask = index.filter_mask(flt)
    return set(map(str, index.doc_ids)) if mask is None else set(map(str, index.doc_ids[mask]))


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return make_rows()


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory, rows) -> Iterator[Index]:
    path = tmp_path_factory.mktemp("filters") / "bm25"
    index = build_index(path, read_dicts(rows), BuildConfig(encoder="none"), progress=False)
    yield index
    index.close()


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory, rows, tiny_bi_encoder_dir) -> Iterator[Index]:
    path = tmp_path_factory.mktemp("filters") / "dense"
    index = build_index(path, read_dicts(rows), BuildConfig(encoder=str(tiny_bi_encoder_dir)), progress=False)
    assert index.dense is not None and index.dense.params.kind == "flat"
    yield index
    index.close()


# -- parsing and validation ------------------------------------------------------------------------


def test_parse_accepts_the_documented_forms():
    assert parse_filter(None) is None
    assert parse_filter({}).matches_all and parse_filter("{}").matches_all
    flt = parse_filter('{"lang": "ja", "year": {"$gte": 2020, "$lt": 2024}}')
    assert isinstance(flt, Filter) and not flt.matches_all
    assert parse_filter(flt) is flt
    where, params = flt.sql()
    assert params == ('$."lang"', "ja", '$."year"', 2020, '$."year"', 2024)
    assert "lang" not in where and "year" not in where  # field names only ever as parameters
    # every operator, including nested logic and field-level $not
    parse_filter(
        {
            "$and": [
                {"a": {"$in": [1, "x", True]}},
                {"$or": [{"b": {"$nin": []}}, {"c": {"$exists": False}}]},
            ],
            "$not": {"d": {"$ne": 1.5}},
            "e": {"$not": {"$gt": 1, "$lte": 9}},
            "カテゴリ": "食",
            "f-g_h": True,
        }
    )


def test_booleans_and_numbers_stay_apart(tmp_path):
    flt = parse_filter({"x": {"$in": [True, 1, 1.0, "1"]}})
    where, params = flt.sql()
    assert params == ('$."x"', 1, "1") and "'true'" in where
    conn = sqlite3.connect(tmp_path / "t.sqlite")
    conn.execute("CREATE TABLE docs (id TEXT, metadata TEXT)")
    values = [True, False, 1, 0, 1.0, "1", [0, True], None]
    conn.executemany(
        "INSERT INTO docs VALUES (?, ?)", [(str(i), json.dumps({"x": v})) for i, v in enumerate(values)]
    )
    matched = {int(i) for (i,) in conn.execute(f"SELECT id FROM docs WHERE {where}", params)}
    assert matched == {0, 2, 4, 5, 6}
    where, params = parse_filter({"x": False}).sql()
    assert {int(i) for (i,) in conn.execute(f"SELECT id FROM docs WHERE {where}", params)} == {1}
    conn.close()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ('{"year": {"$foo": 1}}', r"field 'year': unknown operator '\$foo'"),
        ('{"$where": "1"}', r"unknown operator '\$where'"),
        ('{"$gte": 3}', r"unknown operator '\$gte' at the top level.*inside a field"),
        ('{"year": [2020, 2021]}', r"field 'year'.*use \$in"),
        ('{"year": null}', r"field 'year'.*null.*\$exists"),
        ('{"year": {"$gt": true}}', r"field 'year': '\$gt' compares numbers or strings"),
        ('{"year": {"$in": 2020}}', r"field 'year': '\$in' takes a list"),
        ('{"year": {"$in": [[1]]}}', r"field 'year': '\$in' takes a string, number or boolean"),
        ('{"year": {"$exists": 1}}', r"field 'year': '\$exists' takes true or false"),
        ('{"year": {}}', r"field 'year': empty operator object"),
        ('{"year": {"$gt": {"$lt": 1}}}', r"field 'year': '\$gt' takes a string, number or boolean"),
        ('{"$and": []}', r"'\$and' takes a non-empty list.*empty list"),
        ('{"$or": {"a": 1}}', r"'\$or' takes a non-empty list"),
        ('{"$not": [1]}', r"'\$not' takes a non-empty filter object"),
        ('{"year": NaN}', r"NaN"),
        ('{"year": 1e999}', r"finite"),
        ('{"year": 99999999999999999999}', r"64-bit"),
        ('{"year": ', r"not valid JSON"),
        ('[{"year": 1}]', r"must be a JSON object, got a list"),
        ('"year"', r"must be a JSON object, got a string"),
    ],
)
def test_bad_filters_name_the_operator_or_field(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_filter(spec)


def test_limits():
    with pytest.raises(ConfigError, match="more than 10,000 values"):
        parse_filter({"a": {"$in": list(range(10_001))}})
    deep: dict[str, Any] = {"a": 1}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(ConfigError, match="nested more than"):
        parse_filter(deep)


INJECTIONS = [
    "a') OR 1=1 --",
    "$.x",
    'a"b',
    "a'b",
    "a.b",
    "a[0]",
    "",
    " ",
    "1abc",
    "a b",
    'x"); DROP TABLE docs; --',
    "a\nb",
    "$",
    "a]",
    "*",
]


@pytest.mark.parametrize("field", INJECTIONS)
def test_injection_in_field_names_never_reaches_sql(bm25_index, field):
    statements: list[str] = []
    conn = bm25_index.corpus.db.conn
    conn.set_trace_callback(statements.append)
    try:
        for spec in (
            {field: 1},
            {field: {"$gt": 1}},
            {"$or": [{"a": 1}, {field: {"$in": [1]}}]},
            {"a": {"$not": {"$exists": True}}, field: {"$exists": True}},
        ):
            with pytest.raises(ConfigError, match="field|operator"):
                bm25_index.filter_mask(spec)
            with pytest.raises(ConfigError):
                BM25Retriever(bm25_index).retrieve("東京", 10, filter=spec)
        with pytest.raises(ConfigError):
            create_field_index(bm25_index.path, field)
    finally:
        conn.set_trace_callback(None)
    assert statements == []
    assert len(bm25_index.corpus) == N_DOCS  # the table is intact


def test_valid_unusual_field_names_are_parameters_only(bm25_index, rows):
    statements: list[str] = []
    conn = bm25_index.corpus.db.conn
    conn.set_trace_callback(statements.append)
    try:
        assert mask_ids(bm25_index, {"名前": "東京"}) == allowed_ids(rows, {"名前": "東京"})
        assert mask_ids(bm25_index, {"x--": 1}) == set()
    finally:
        conn.set_trace_callback(None)
    # SQLite's trace shows bound values expanded: the names appear only as JSON-path values.
    assert statements
    for name in ("名前", "x--"):
        text = " ".join(s for s in statements if name in s)
        assert text and name not in text.replace(f"'$.\"{name}\"'", "")


# -- masks: every operator, random filters, positions ---------------------------------------------

OPERATOR_CASES = [
    {"category": "food"},
    {"category": {"$eq": "food"}},
    {"category": {"$ne": "food"}},
    {"year": {"$gt": 2012}},
    {"year": {"$gte": 2012}},
    {"year": {"$lt": 2012}},
    {"year": {"$lte": 2012}},
    {"year": 2012.0},
    {"year": "2012"},
    {"year": {"$gte": "2013"}},
    {"score": {"$gte": 2.5, "$lt": 7.25}},
    {"year": {"$in": [2001, 2002, "2003"]}},
    {"year": {"$nin": [2001, 2002]}},
    {"year": {"$in": []}},
    {"year": {"$nin": []}},
    {"tags": "a"},
    {"tags": {"$ne": "a"}},
    {"tags": {"$in": ["a", "z"]}},
    {"tags": {"$nin": ["a"]}},
    {"tags": {"$gt": "b"}},
    {"tags": {"$exists": True}},
    {"flag": True},
    {"flag": False},
    {"flag": {"$ne": True}},
    {"flag": {"$in": [True, 1]}},
    {"note": {"$exists": True}},
    {"note": {"$exists": False}},
    {"note": "x"},
    {"note": {"$ne": "x"}},
    {"absent": 1},
    {"absent": {"$ne": 1}},
    {"absent": {"$exists": False}},
    {"absent": {"$nin": [1]}},
    {"名前": {"$in": ["東京", "京都"]}},
    {"$or": [{"category": "food"}, {"flag": True}]},
    {"$and": [{"category": "food"}, {"flag": True}]},
    {"$not": {"category": "food"}},
    {"year": {"$not": {"$gte": 2012}}},
    {"category": "food", "tags": "b", "year": {"$gte": 2005}},
]


@pytest.mark.parametrize("flt", OPERATOR_CASES, ids=json.dumps)
def test_every_operator_matches_the_oracle(bm25_index, rows, flt):
    assert mask_ids(bm25_index, flt) == allowed_ids(rows, flt)


def test_operator_cases_are_not_trivial(rows):
    # The cases above mean something only if they split this corpus.
    trivial = [f for f in OPERATOR_CASES if not 0 < len(allowed_ids(rows, f)) < len(rows)]
    assert trivial == [
        {"year": {"$in": []}},
        {"year": {"$nin": []}},
        {"tags": {"$exists": True}},
        {"absent": 1},
        {"absent": {"$ne": 1}},
        {"absent": {"$exists": False}},
        {"absent": {"$nin": [1]}},
    ]
    assert allowed_ids(rows, {"year": {"$gte": 2000}}) != allowed_ids(rows, {"year": {"$exists": True}})
    assert any(isinstance(r["tags"], list) and len(r["tags"]) > 1 for r in rows)


def test_random_filters_match_the_oracle(bm25_index, rows):
    filters = random_filters(300)
    sizes = []
    for flt in filters:
        expected = allowed_ids(rows, flt)
        assert mask_ids(bm25_index, flt) == expected, flt
        sizes.append(len(expected))
    # The generator exercises empty, partial and full matches.
    assert min(sizes) == 0 and max(sizes) == N_DOCS and sum(0 < s < N_DOCS for s in sizes) > 150


def test_masks_are_cached_per_index_version_and_read_only(bm25_index):
    a = bm25_index.filter_mask({"category": "food"})
    assert bm25_index.filter_mask('{"category": "food"}') is a
    assert bm25_index.filter_mask({"category": {"$eq": "food"}}) is a  # same compiled query
    assert a is not None and not a.flags.writeable
    assert bm25_index.filter_mask({}) is None and bm25_index.filter_mask(None) is None
    reopened = Index.open(bm25_index.path)
    assert reopened.filter_mask({"category": "food"}) is not a
    np.testing.assert_array_equal(reopened.filter_mask({"category": "food"}), a)
    reopened.close()


# -- BM25, dense, hybrid ---------------------------------------------------------------------------


def filtered_reference(full: list[Any], ok: set[str], k: int) -> list[Any]:
    return [h for h in full if h.doc_id in ok][:k]


def assert_same_ranking(got: list[Any], ref: list[Any], atol: float) -> None:
    """Same ids and scores; positions may differ only between scores tied within ``atol``."""
    assert len(got) == len(ref)
    np.testing.assert_allclose([h.score for h in got], [h.score for h in ref], rtol=0, atol=atol)
    for a, b in zip(got, ref, strict=True):
        assert a.doc_id == b.doc_id or abs(a.score - b.score) <= atol
    assert [h.rank for h in got] == list(range(1, len(got) + 1))


def test_bm25_filtered_equals_unfiltered_minus_excluded(bm25_index, rows):
    retriever = BM25Retriever(bm25_index)
    filters = [
        {"category": "food"},
        {"year": {"$gte": 2015}},
        {"tags": {"$in": ["a", "b"]}},
        {"$not": {"flag": True}},
        *random_filters(40, seed=3),
    ]
    for flt in filters:
        ok = allowed_ids(rows, flt)
        for q in QUERIES:
            full = retriever.retrieve(q, N_DOCS)
            for k in (5, 50, N_DOCS):
                got = retriever.retrieve(q, k, filter=flt)
                ref = filtered_reference(full, ok, k)
                # Same documents, same order, same scores (full-corpus statistics).
                assert [(h.doc_id, h.score) for h in got] == [(h.doc_id, h.score) for h in ref]
        batch = retriever.retrieve_batch(QUERIES, 20, filter=flt)
        assert batch == [retriever.retrieve(q, 20, filter=flt) for q in QUERIES]


def test_dense_flat_filtered_equals_unfiltered_minus_excluded(dense_index, rows):
    retriever = DenseRetriever(dense_index)
    for flt in [{"category": "food"}, {"year": {"$lt": 2010}}, {"名前": "京都"}, *random_filters(12, seed=5)]:
        ok = allowed_ids(rows, flt)
        fulls = retriever.retrieve_batch(QUERIES, N_DOCS)
        for k in (10, N_DOCS):
            got = retriever.retrieve_batch(QUERIES, k, filter=flt)
            for hits, full in zip(got, fulls, strict=True):
                assert_same_ranking(hits, filtered_reference(full, ok, k), atol=1e-5)
                assert len(hits) == min(k, len(ok))  # never padded, never short


def test_hybrid_fuses_the_filtered_lists(dense_index, rows):
    bm25, dense = BM25Retriever(dense_index), DenseRetriever(dense_index)
    hybrid = HybridRetriever([bm25, dense], FusionConfig(depth=30, weights=(0.6, 0.4)))
    for flt in [{"category": "food"}, {"tags": "c", "year": {"$gte": 2010}}, {"absent": 1}]:
        ok = allowed_ids(rows, flt)
        for q in QUERIES:
            got = hybrid.retrieve(q, 10, filter=flt)
            expected = score_fusion(
                [bm25.retrieve(q, 30, filter=flt), dense.retrieve(q, 30, filter=flt)], 10, weights=(0.6, 0.4)
            )
            assert got == expected
            assert {h.doc_id for h in got} <= ok and len(got) == min(10, len(ok))


def test_no_result_ever_violates_the_filter(dense_index, rows):
    by_id = {r["id"]: meta_of(r) for r in rows}
    retrievers = [
        BM25Retriever(dense_index),
        DenseRetriever(dense_index),
        HybridRetriever([BM25Retriever(dense_index), DenseRetriever(dense_index)]),
    ]
    for flt in random_filters(30, seed=9):
        for retriever in retrievers:
            for hits in retriever.retrieve_batch(QUERIES[:3], 25, filter=flt):
                assert all(holds(by_id[h.doc_id], flt) for h in hits), (retriever.stage, flt)


def test_k_beyond_the_matches_returns_them_all_and_empty_is_fine(dense_index, rows):
    few = {"year": {"$in": [2001, 2002]}}
    ok = allowed_ids(rows, few)
    assert 0 < len(ok) < 30
    dense_hits = DenseRetriever(dense_index).retrieve("寿司", 100, filter=few)
    assert {h.doc_id for h in dense_hits} == ok  # all of them, no -1 padding
    bm25_hits = BM25Retriever(dense_index).retrieve("寿司 東京 日本", 100, filter=few)
    assert {h.doc_id for h in bm25_hits} <= ok and len(bm25_hits) == len(set(h.doc_id for h in bm25_hits))
    none = {"category": "no-such-category"}
    for retriever in (
        BM25Retriever(dense_index),
        DenseRetriever(dense_index),
        HybridRetriever([BM25Retriever(dense_index), DenseRetriever(dense_index)]),
    ):
        assert retriever.retrieve("寿司", 10, filter=none) == []
        assert retriever.retrieve_batch(["寿司", "東京"], 10, filter=none) == [[], []]


# -- the FAISS index directly: exact path, selector path, IVFPQ recall -------------------------------


def clustered(n: int, dim: int, *, seed: int = 0, clusters: int = 40, spread: float = 0.25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_filtered(x: np.ndarray, q: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    ids = np.flatnonzero(allowed)
    scores = q @ x[ids].T
    return np.stack([ids[np.argsort(-row, kind="stable")[:k]] for row in scores])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def test_flat_selector_and_exact_paths_equal_the_reference():
    x = clustered(3000, 24, seed=3)
    index = DenseIndex.build(x, FaissParams(kind="flat"))
    rng = np.random.default_rng(4)
    q = clustered(8, 24, seed=5)
    for frac in (0.5, 0.05, 0.003):
        allowed = rng.random(len(x)) < frac
        truth = exact_filtered(x, q, allowed, 50)
        for exact_max in (0, len(x)):  # force the FAISS selector, then exact scoring
            scores, pos = index.search(q, 50, allowed=allowed, exact_max=exact_max)
            assert pos.shape == truth.shape and (pos >= 0).all()
            np.testing.assert_array_equal(pos, truth)
            np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, axis=1), atol=1e-5)


@pytest.fixture(scope="module")
def ivfpq() -> tuple[DenseIndex, np.ndarray]:
    x = clustered(12_000, 32, seed=1)
    return DenseIndex.build(x, FaissParams(kind="ivfpq", nlist=64, m=8, nprobe=8, rescore=4)), x


@pytest.mark.parametrize("frac", [0.5, 0.05, 0.005])
def test_ivfpq_filtered_recall_and_exact_small_sets(ivfpq, frac):
    index, x = ivfpq
    rng = np.random.default_rng(7)
    allowed = rng.random(len(x)) < frac
    q = x[rng.choice(len(x), 40, replace=False)] + 0.05 * rng.normal(size=(40, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = 100
    truth = exact_filtered(x, q, allowed, k)
    _, pos = index.search(q, k, allowed=allowed, exact_max=0)  # the FAISS selector path
    assert allowed[pos[pos >= 0]].all()
    unfiltered = recall(index.search(q, k)[1], exact_filtered(x, q, np.ones(len(x), bool), k))
    # Probing nprobe / selectivity lists keeps filtered recall near the unfiltered level.
    assert recall(pos, truth) >= min(0.9, unfiltered - 0.05), (recall(pos, truth), unfiltered)
    if frac < 0.5:
        assert allowed.sum() <= EXACT_MAX_ALLOWED
        # The default for small sets: exact scores, even with PQ re-scoring switched off.
        scores, pos = index.search(q, k, allowed=allowed, rescore=0)
        np.testing.assert_array_equal(pos, truth)
        np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, axis=1), atol=1e-5)


def test_ivfpq_few_allowed_in_probed_lists_still_returns_k(ivfpq):
    index, x = ivfpq
    # Allow only the documents of the 16 IVF lists farthest from the query: the lists probed
    # first (nprobe / selectivity of them, fewer than all) hold none of them.
    ivf = faiss.extract_index_ivf(index.index)
    _, lists = ivf.quantizer.search(x, 1)
    q = x[:1]
    far_lists = np.argsort(ivf.quantizer.reconstruct_n(0, ivf.nlist) @ q[0])[:16]
    allowed = np.isin(lists[:, 0], far_lists)
    assert 8 * len(x) / allowed.sum() < ivf.nlist  # the first search is not already exhaustive
    scores, pos = index.search(q, 100, allowed=allowed, exact_max=0)
    assert pos.shape == (1, 100) and (pos >= 0).all() and allowed[pos].all()
    assert recall(pos, exact_filtered(x, q, allowed, 100)) >= 0.9
    with pytest.raises(ConfigError, match="shape"):
        index.search(q, 10, allowed=np.ones(5, bool))


# -- updates: positions after add / delete ---------------------------------------------------------


@pytest.mark.parametrize("faiss_kind", ["flat", "ivfpq"])
def test_filters_after_add_and_delete(tmp_path, rows, tiny_bi_encoder_dir, faiss_kind):
    params = (
        FaissParams(kind="ivfpq", nlist=4, m=8, nbits=4, nprobe=4, rescore=4)
        if faiss_kind == "ivfpq"
        else FaissParams()
    )
    config = BuildConfig(encoder=str(tiny_bi_encoder_dir), faiss=params)
    path = tmp_path / "u"
    build_index(path, read_dicts(rows[:150]), config, progress=False).close()
    new = make_rows(40, seed=99, prefix="n") + [dict(rows[3], category="replaced", year=1990)]
    deleted = [r["id"] for r in rows[10:40:3]]
    update_index(path, read_dicts(new), deleted, progress=False)
    by_id = {r["id"]: r for r in rows[:150]} | {r["id"]: r for r in new}
    final = [r for i, r in by_id.items() if i not in deleted]
    index = Index.open(path)
    # Deleted rows leave rowid gaps and the replaced row keeps its rowid: positions still map.
    rowids = [r for (r,) in index.corpus.db.conn.execute("SELECT rowid FROM docs ORDER BY rowid")]
    assert rowids != list(range(1, len(rowids) + 1))
    for flt in [{"category": "replaced"}, {"year": 1990}, *random_filters(80, seed=21)]:
        assert mask_ids(index, flt) == allowed_ids(final, flt), flt
    assert mask_ids(index, {"category": "replaced"}) == {rows[3]["id"]}
    bm25, dense = BM25Retriever(index), DenseRetriever(index)
    for flt in [{"category": "food"}, {"tags": "a"}, {"year": {"$gte": 2012}}]:
        ok = allowed_ids(final, flt)
        for q in QUERIES[:4]:
            ref = filtered_reference(bm25.retrieve(q, len(index)), ok, 20)
            assert [(h.doc_id, h.score) for h in bm25.retrieve(q, 20, filter=flt)] == [
                (h.doc_id, h.score) for h in ref
            ]
            hits = dense.retrieve(q, 20, filter=flt)
            assert {h.doc_id for h in hits} <= ok and len(hits) == min(20, len(ok))
            if faiss_kind == "flat":
                assert_same_ranking(
                    hits, filtered_reference(dense.retrieve(q, len(index)), ok, 20), atol=1e-5
                )
    index.close()


def test_cli_filtered_search_after_cli_add_and_delete(tmp_path, rows, capsys):
    docs = write_jsonl(tmp_path / "docs.jsonl", rows[:60])
    path = tmp_path / "cli"
    assert cli_main(["build", str(path), str(docs), "--encoder", "none", "--quiet"]) == 0
    more = write_jsonl(
        tmp_path / "more.jsonl", [dict(rows[60], category="newcat"), dict(rows[5], category="newcat")]
    )
    assert cli_main(["add", str(path), str(more), "--quiet"]) == 0
    assert cli_main(["delete", str(path), "--ids", rows[0]["id"], rows[7]["id"], "--quiet"]) == 0
    capsys.readouterr()
    assert (
        cli_main(
            [
                "search",
                str(path),
                "東京 日本 寿司 富士山",
                "-k",
                "50",
                "--json",
                "--filter",
                '{"category": "newcat"}',
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert {h["id"] for h in hits} <= {rows[60]["id"], rows[5]["id"]}
    assert all(h["metadata"]["category"] == "newcat" for h in hits)
    flt = {"year": {"$gte": 2010}, "category": {"$ne": "newcat"}}
    assert cli_main(["search", str(path), "東京", "-k", "50", "--json", "--filter", json.dumps(flt)]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and all(holds(h["metadata"], flt) for h in hits)
    assert rows[0]["id"] not in {h["id"] for h in hits}


def test_cli_bad_filters_fail_clearly(tmp_path, bm25_index, capsys):
    for bad, message in [
        ("{bad json", "filter is not valid JSON"),
        ('{"year": {"$regex": "x"}}', "unknown operator '$regex'"),
        ('{"a\') OR 1=1 --": 1}', "is not a valid field name"),
    ]:
        assert cli_main(["search", str(bm25_index.path), "東京", "--filter", bad]) == 2
        err = capsys.readouterr().err
        assert "tansaku: error:" in err and message in err
    assert cli_main(["search", str(bm25_index.path), "東京", "--filter", '{"category": "no-such"}']) == 0
    assert "no documents match '東京' and the --filter" in capsys.readouterr().out


def test_cli_eval_with_filter(tmp_path, bm25_index, rows, capsys):
    food = sorted(allowed_ids(rows, {"category": "food"}))
    other = sorted(set(r["id"] for r in rows) - set(food))
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "text": "東京 日本 寿司"}])
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"q1 0 {d} 1\n" for d in other[:20]), encoding="utf-8")
    args = [
        "eval",
        str(bm25_index.path),
        "--queries",
        str(queries),
        "--qrels",
        str(qrels),
        "--metrics",
        "recall@100",
        "--out",
        str(tmp_path / "runs"),
        "--json",
        "--quiet",
    ]
    assert cli_main(args) == 0
    unfiltered = json.loads(capsys.readouterr().out)["stages"][0]["metrics"]["recall@100"]
    assert cli_main([*args, "--filter", '{"category": "food"}']) == 0
    filtered = json.loads(capsys.readouterr().out)["stages"][0]["metrics"]["recall@100"]
    assert unfiltered > 0 and filtered == 0.0  # every judged document is filtered out
    run = (tmp_path / "runs" / "bm25.run").read_text(encoding="utf-8").split("\n")
    assert {line.split()[2] for line in run if line} <= set(food)
    assert cli_main([*args, "--filter", "{oops"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "eval",
                "--run",
                str(tmp_path / "runs" / "bm25.run"),
                "--qrels",
                str(qrels),
                "--filter",
                '{"category": "food"}',
            ]
        )
        == 2
    )
    assert "--filter applies to searching an INDEX" in capsys.readouterr().err


# -- the Python API, the pipeline and HTTP -----------------------------------------------------------


def test_api_and_pipeline_take_filters(dense_index, rows):
    by_id = {r["id"]: meta_of(r) for r in rows}
    flt = {"category": {"$in": ["food", "sports"]}, "year": {"$gte": 2008}}
    with tansaku.open(dense_index.path, top_n=15) as idx:
        for mode in ("bm25", "dense", "hybrid"):
            res = idx.search("日本の料理", filter=flt, mode=mode)
            assert res.hits and all(holds(by_id[h.doc_id], flt) for h in res.candidates)
            assert all(h.metadata["category"] in ("food", "sports") for h in res.hits)
        batch = idx.search_batch(["寿司", "東京"], filter=json.dumps(flt), mode="bm25")
        assert [r.hits for r in batch] == [
            idx.search(q, filter=flt, mode="bm25").hits for q in ("寿司", "東京")
        ]
        with pytest.raises(ConfigError, match="unknown operator"):
            idx.search("寿司", filter={"year": {"$between": [1, 2]}})
    pipeline = SearchPipeline(BM25Retriever(dense_index), top_n=5)
    res = pipeline.search("寿司", filter=flt)
    assert all(holds(by_id[h.doc_id], flt) for h in res.candidates)
    assert res.hits[0].title  # hydrated after filtering


@pytest.fixture(scope="module")
def server(bm25_index) -> Iterator[str]:
    servers = LoopbackServers()
    searcher = tansaku.open(bm25_index.path, top_n=10)
    served = servers.start(create_app(searcher, None))
    yield served.url
    servers.close()
    searcher.close()


def test_http_search_with_filter(server, rows):
    by_id = {r["id"]: meta_of(r) for r in rows}
    flt = {"$or": [{"category": "food"}, {"tags": {"$in": ["d"]}}], "year": {"$lt": 2015}}
    res = httpx.post(
        f"{server}/v1/search", json={"query": "東京 寿司", "top_n": 20, "filter": flt}, timeout=60
    )
    assert res.status_code == 200, res.text
    hits = res.json()["hits"]
    assert hits and all(holds(by_id[h["id"]], flt) for h in hits)
    assert all(holds(h["metadata"], flt) for h in hits)
    res = httpx.post(
        f"{server}/v1/search", json={"query": "東京", "filter": {"category": "none"}}, timeout=60
    )
    assert res.status_code == 200 and res.json()["hits"] == []


@pytest.mark.parametrize(
    ("flt", "words"),
    [
        ({"year": {"$regex": "20"}}, ["'year'", "$regex"]),
        ({"a') OR 1=1 --": 1}, ["not a valid field name"]),
        ({"year": None}, ["'year'", "null"]),
        ({"$and": "x"}, ["$and"]),
        ("year", []),  # not an object: pydantic's own 422
        ([{"year": 1}], []),
    ],
)
def test_http_bad_filter_is_a_422_naming_it(server, flt, words):
    res = httpx.post(f"{server}/v1/search", json={"query": "東京", "filter": flt}, timeout=60)
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == "filter"
    assert all(w in error["message"] for w in words), error["message"]


def test_a_filter_field_no_document_has_is_a_warning(tmp_path, bm25_index, dense_index, rows, server, capsys):
    typo = {"yaer": {"$gte": 2010}}
    with tansaku.open(bm25_index.path, top_n=5) as idx:
        res = idx.search("東京", filter=typo, mode="bm25")
        assert res.hits == [] and len(res.warnings) == 1
        (warning,) = res.warnings
        assert "filter field 'yaer' is in no document" in warning and "did you mean 'year'?" in warning
        assert "category" in warning and "名前" in warning  # the known fields are listed
        assert res.to_dict()["warnings"] == res.warnings
        # fields some document has (even only as null) are fine, however rare; nested ones are checked too
        assert idx.search("東京", filter={"note": {"$exists": True}, "category": "food"}).warnings == []
        nested = idx.search_batch(
            ["東京", "寿司"], filter={"$or": [{"year": 2010}, {"$not": {"citty": "x"}}]}
        )
        assert [len(r.warnings) for r in nested] == [1, 1] and "'citty'" in nested[0].warnings[0]
        assert idx.search("東京").warnings == []
    with tansaku.open(dense_index.path, top_n=5) as idx:  # every first stage, hybrid included
        for mode in ("hybrid", "dense", "bm25"):
            assert "'yaer'" in idx.search("東京", filter=typo, mode=mode).warnings[0], mode
    assert (
        "'yaer'"
        in SearchPipeline(HybridRetriever([BM25Retriever(dense_index), DenseRetriever(dense_index)]))
        .search("東京", filter=typo)
        .warnings[0]
    )
    # a sharded index knows the fields of every shard
    sharded = tmp_path / "sharded"
    extra = dict(rows[150], only_here="x")
    build_index(
        sharded, read_dicts([*rows[:150], extra]), BuildConfig(encoder="none", shard_docs=50), progress=False
    ).close()
    with tansaku.open(sharded, top_n=5) as idx:
        assert len(idx.index.shards) == 4
        assert idx.search("東京", filter={"only_here": "x"}).warnings == []
        assert "'yaer'" in idx.search("東京", filter=typo).warnings[0]
    # over HTTP and from the CLI
    body = httpx.post(f"{server}/v1/search", json={"query": "東京", "filter": typo}, timeout=60).json()
    assert body["hits"] == [] and "'yaer'" in body["warnings"][0]
    ok = httpx.post(f"{server}/v1/search", json={"query": "東京", "filter": {"year": 2010}}, timeout=60)
    assert ok.json()["warnings"] == []
    assert cli_main(["search", str(bm25_index.path), "東京", "--filter", json.dumps(typo)]) == 0
    err = capsys.readouterr().err
    assert "tansaku: warning: filter field 'yaer' is in no document" in err


# -- the expression-index helper -------------------------------------------------------------------


def test_create_field_index(tmp_path, rows):
    path = tmp_path / "fx"
    build_index(path, read_dicts(rows[:50]), BuildConfig(encoder="none"), progress=False).close()
    name = create_field_index(path, "year")
    assert name == "tansaku_meta_year" and create_field_index(path, "year") == name  # idempotent
    with sqlite3.connect(path / "corpus.sqlite") as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT rowid FROM docs WHERE json_extract(metadata, '$.\"year\"') = 2020"
        ).fetchall()
        assert any(name in row[-1] for row in plan)  # literal-path SQL seeks the index
        where, params = parse_filter({"year": 2020}).sql()
        plan = conn.execute(f"EXPLAIN QUERY PLAN SELECT rowid FROM docs WHERE {where}", params).fetchall()
        assert not any(name in row[-1] for row in plan)  # as its docstring says: masks scan
    conn.close()
    update_index(path, read_dicts(rows[50:60]), [rows[0]["id"]], progress=False)
    index = Index.open(path)
    names = [
        r for (r,) in index.corpus.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    ]
    assert name in names  # updates keep it
    final = rows[1:60]
    assert mask_ids(index, {"year": {"$gte": 2010}}) == allowed_ids(final, {"year": {"$gte": 2010}})
    assert create_field_index(index, "名前") == "tansaku_meta_名前"
    index.close()
    with pytest.raises(IndexFormatError, match="no index"):
        create_field_index(tmp_path / "nowhere", "year")


def test_filters_sqlite_cannot_run_are_refused_up_front():
    from tansaku.index.filters import MAX_CONDITIONS

    parse_filter({"$or": [{"year": i} for i in range(MAX_CONDITIONS)]})  # at the limit: fine
    with pytest.raises(ConfigError, match=r"501 conditions.*\$in"):
        parse_filter({"$or": [{"year": i} for i in range(MAX_CONDITIONS + 1)]})
    with pytest.raises(ConfigError, match="'lang'.*lone surrogate"):
        parse_filter({"lang": {"$in": ["ja", "\ud800"]}})

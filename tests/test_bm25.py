"""BM25: scores equal rank-bm25's BM25Okapi on every document; top-k, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from helpers import sample_rows
from tansaku.index import BM25Index, BM25Params, ConfigError, IndexFormatError, get_analyzer
from tansaku.index import bm25_kernels as kernels
from tansaku.pipeline.eval.datasets import load_jsquad

JA = get_analyzer("ja-surface")  # rank-bm25 parity is pinned on plain fugashi surface forms


@pytest.fixture(scope="module")
def sample_tokens():
    rows = sample_rows()
    docs = [JA.tokenize(f"{r['title']} {r['text']}") for r in rows]
    queries = [
        "富士山の高さは",
        "東京の人口",
        "検索エンジンの仕組み",
        "寿司 寿司 寿司",
        "how does a search engine rank documents",
        "存在しない単語ｘｙｚ",
        "の の は",
    ]
    return docs, [JA.tokenize(q) for q in queries]


def assert_parity(docs, queries, params=BM25Params(), tol=1e-6):
    ours = BM25Index.build(docs, params)
    ref = BM25Okapi(docs, k1=params.k1, b=params.b, epsilon=params.epsilon)
    worst = 0.0
    for q in queries:
        expected = ref.get_scores(q)
        got = ours.get_scores(q)
        assert got.shape == expected.shape
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= tol, worst
    return ours, ref


def test_parity_with_rank_bm25_on_sample(sample_tokens):
    docs, queries = sample_tokens
    assert_parity(docs, queries)
    assert_parity(docs, queries, BM25Params(k1=0.9, b=0.4, epsilon=0.5))
    assert_parity(docs, queries, BM25Params(dtype="float32"), tol=1e-4)


def test_weights_computed_in_blocks_equal_one_pass(sample_tokens, monkeypatch):
    """Large corpora compute posting weights block by block; blocks must not change a bit."""
    import tansaku.index.bm25 as bm25_module

    docs, queries = sample_tokens
    whole = BM25Index.build(docs)
    monkeypatch.setattr(bm25_module, "_WEIGHT_BLOCK", 37)  # many blocks, some mid-term
    blocked, _ = assert_parity(docs, queries)
    assert len(blocked.weights) > 20 * 37
    np.testing.assert_array_equal(blocked.weights, whole.weights)


def test_parity_with_rank_bm25_on_jsquad(jsquad_path):
    ds = load_jsquad(jsquad_path)
    docs = [JA.tokenize(f"{d['title']} {d['text']}") for d in ds.corpus]
    queries = [JA.tokenize(q) for q in list(ds.queries.values())[::40]]  # 112 real questions
    assert_parity(docs, queries)


def test_parity_with_rank_bm25_on_ja_tokens_and_weighted_ngrams():
    """The ``ja`` analyzer's words + n-grams are plain tokens to BM25; an n-gram weight w
    scales exactly that term's rank-bm25 contribution."""
    ja = get_analyzer("ja")
    rows = sample_rows()
    docs = [ja.tokenize(f"{r['title']} {r['text']}") for r in rows]
    queries = [ja.tokenize(q) for q in ("富士山の高さは", "検索エンジンの仕組み", "の の は")]
    ours, ref = assert_parity(docs, queries)
    weighted = get_analyzer({"ngram": {"n": 2, "weight": 0.3}})
    for q in queries:
        expected = sum(weighted.term_weight(t) * ref.get_scores([t]) for t in q)
        got = ours.get_scores(q, weighted.term_weight)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
        pos, scores = ours.top_k(q, 5, weight=weighted.term_weight)
        assert list(pos) == sorted(np.flatnonzero(got > 0), key=lambda i: (-got[i], i))[:5]
        np.testing.assert_allclose(scores, got[pos], atol=1e-9)
        ((bpos, bscores),) = ours.top_k_batch([q], 5, weight=weighted.term_weight)
        np.testing.assert_array_equal(bpos, pos)
    assert not np.allclose(ours.get_scores(queries[0], weighted.term_weight), ours.get_scores(queries[0]))


def test_negative_idf_floor_and_empty_docs():
    # "a" appears in 3 of 4 docs: negative idf, floored at epsilon * mean idf as rank-bm25 does.
    docs = [["a", "b"], ["a"], ["a", "c", "c"], []]
    ours, ref = assert_parity(docs, [["a"], ["c", "a"], ["b", "b"], ["zzz"]])
    pos, scores = ours.top_k(["a"], 10)
    assert list(pos) == [1, 0, 2]  # the empty doc never matches
    np.testing.assert_allclose(scores, ref.get_scores(["a"])[[1, 0, 2]])


def test_dense_queries_with_zero_and_negative_weights_still_return_every_match():
    """Large queries skip per-posting bookkeeping only when every weight is positive."""
    # "half" is in exactly half the documents: idf 0, so its matches score exactly 0;
    # with epsilon=-1 the frequent "most" gets negative weights.
    docs = [["half", "most"] if i % 2 else ["most", f"w{i}"] for i in range(400)]
    docs += [[f"w{i}", "half"] if i % 2 else [f"w{i}"] for i in range(400, 440)]
    for params in (BM25Params(), BM25Params(epsilon=-1.0)):
        index = BM25Index.build(docs, params)
        for q in (["half"], ["half", "w3"], ["most", "w1"], ["most"]):
            postings = int(np.diff(index.indptr)[index.query_terms(q)[0]].sum())
            assert postings >= index.n_docs // kernels.DENSE_MARK_RATIO
            full = index.get_scores(q)
            matched = sorted(
                {
                    int(d)
                    for t in index.query_terms(q)[0]
                    for d in index.postings[index.indptr[t] : index.indptr[t + 1]]
                }
            )
            expected = sorted(matched, key=lambda i: (-full[i], i))
            pos, scores = index.top_k(q, len(docs))
            assert list(pos) == expected, (params, q)
            np.testing.assert_array_equal(scores, full[expected])
    assert (BM25Index.build(docs).get_scores(["half"]) == 0).all()  # the zero case is real


def _without_dense_rows(index):
    """The same index scoring every term from its postings (no dense rows)."""
    plain = BM25Index(
        vocab=index.vocab,
        indptr=index.indptr,
        postings=index.postings,
        tf=index.tf,
        weights=index.weights,
        doc_len=index.doc_len,
        params=index.params,
        dense_rows=np.full(len(index.vocab), -1, np.int64),
        dense_weights=np.zeros((0, index.n_docs)),
    )
    return plain


def test_dense_rows_score_bit_identically_to_postings(sample_tokens):
    """Terms in >= half the documents are added from a dense row: same numbers, same order."""
    docs, queries = sample_tokens
    ngram = get_analyzer({"ngram": {"n": 2, "weight": 0.3}})
    rows = sample_rows()
    for tokens in (docs, [ngram.tokenize(f"{r['title']} {r['text']}") for r in rows]):
        index = BM25Index.build(tokens)
        df = np.diff(index.indptr)
        dense_terms = np.flatnonzero(index.dense_rows >= 0)
        assert len(dense_terms) > 0
        assert set(dense_terms) == set(np.flatnonzero(df >= index.n_docs / 2))
        for t in dense_terms:
            row = index.dense_weights[index.dense_rows[t]]
            lo, hi = index.indptr[t], index.indptr[t + 1]
            np.testing.assert_array_equal(row[index.postings[lo:hi]], index.weights[lo:hi])
            assert np.count_nonzero(row) == np.count_nonzero(index.weights[lo:hi])  # 0 elsewhere
        plain = _without_dense_rows(index)
        frequent = [index.vocab[t] for t in dense_terms]
        qs = [ngram.tokenize(q) for q in ("富士山の高さは", "検索エンジンの仕組み")] + queries
        qs += [frequent, frequent[:1] * 3 + ["寿司"]]
        mask = np.arange(index.n_docs) % 3 > 0
        for weight in (None, ngram.term_weight):
            for allowed in (None, mask):
                got = index.top_k_batch(qs, 7, allowed=allowed, weight=weight)
                want = plain.top_k_batch(qs, 7, allowed=allowed, weight=weight)
                for q, (pos, sc), (wpos, wsc) in zip(qs, got, want, strict=True):
                    np.testing.assert_array_equal(pos, wpos)
                    np.testing.assert_array_equal(sc, wsc)  # bit for bit
                    one = index.top_k(q, 7, allowed=allowed, weight=weight)
                    np.testing.assert_array_equal(one[0], pos)
                    np.testing.assert_array_equal(one[1], sc)


def test_index_without_dense_rows_on_disk_computes_them(tmp_path, sample_tokens):
    docs, queries = sample_tokens
    index = BM25Index.build(docs)
    index.save(tmp_path / "bm25")
    for name in ("dense_rows.npy", "dense_weights.npy"):  # as written before they existed
        (tmp_path / "bm25" / name).unlink()
    loaded = BM25Index.load(tmp_path / "bm25", BM25Params())
    np.testing.assert_array_equal(loaded.dense_rows, index.dense_rows)
    np.testing.assert_array_equal(loaded.dense_weights, index.dense_weights)
    for q in queries:
        for a, b in zip(loaded.top_k(q, 10), index.top_k(q, 10), strict=True):
            np.testing.assert_array_equal(a, b)
    np.save(tmp_path / "bm25" / "dense_rows.npy", index.dense_rows[:-1])
    np.save(tmp_path / "bm25" / "dense_weights.npy", index.dense_weights)
    with pytest.raises(IndexFormatError, match="dense rows"):
        BM25Index.load(tmp_path / "bm25", BM25Params())


def test_top_k_order_ties_and_limits(sample_tokens):
    docs, queries = sample_tokens
    index = BM25Index.build(docs)
    q = queries[2]
    full = index.get_scores(q)
    pos, scores = index.top_k(q, 5)
    expected = sorted(np.flatnonzero(full > 0), key=lambda i: (-full[i], i))[:5]
    assert list(pos) == expected and np.allclose(scores, full[expected])
    assert np.all(np.diff(scores) <= 0)
    pos_all, _ = index.top_k(q, 10_000)
    assert set(pos_all) == set(np.flatnonzero(full > 0))  # only matching documents
    assert len(index.top_k(["存在しない"], 10)[0]) == 0
    mask = np.zeros(index.n_docs, bool)
    mask[expected[1:]] = True
    assert list(index.top_k(q, 5, allowed=mask)[0]) == expected[1:]
    # Ties: identical documents tie exactly and break by position.
    tie = BM25Index.build([["x", "y"], ["x", "y"], ["y"]])
    assert list(tie.top_k(["x"], 2)[0]) == [0, 1]
    with pytest.raises(ConfigError):
        index.top_k(q, 0)
    with pytest.raises(ConfigError, match="mask"):
        index.top_k(q, 5, allowed=np.ones(3, bool))


def test_batch_and_threads_equal_single(sample_tokens):
    docs, queries = sample_tokens
    index = BM25Index.build(docs)
    many = queries * 7 + [["東京"], [], ["the"]]
    for threads in (1, 2):
        for k in (1, 3, 100):
            batch = index.top_k_batch(many, k, threads=threads)
            assert len(batch) == len(many)
            for q, (pos, scores) in zip(many, batch, strict=True):
                one_pos, one_scores = index.top_k(q, k)
                np.testing.assert_array_equal(pos, one_pos)
                np.testing.assert_array_equal(scores, one_scores)
    assert index.top_k_batch([], 5) == []


def test_top_k_matches_reference_ranking_on_jsquad(jsquad_path):
    ds = load_jsquad(jsquad_path)
    index = BM25Index.build([JA.tokenize(f"{d['title']} {d['text']}") for d in ds.corpus])
    queries = [JA.tokenize(q) for q in list(ds.queries.values())[::20]]
    # single words too: few postings take the kernel's branchy path, many its marking pass
    queries += [[t] for t in index.vocab[::400]]
    postings = [int(np.diff(index.indptr)[index.query_terms(q)[0]].sum()) for q in queries]
    threshold = index.n_docs // kernels.DENSE_MARK_RATIO
    assert min(postings) < threshold <= max(postings)
    for q, (pos, scores) in zip(queries, index.top_k_batch(queries, 100), strict=True):
        full = index.get_scores(q)
        matched = np.flatnonzero(full > 0)
        expected = sorted(matched, key=lambda i: (-full[i], i))[:100]
        assert list(pos) == expected
        np.testing.assert_allclose(scores, full[expected], rtol=0, atol=1e-9)
        single_pos, single_scores = index.top_k(q, 100)
        assert list(single_pos) == expected and np.array_equal(single_scores, scores)


def test_repeated_query_terms_count_each_time(sample_tokens):
    docs, _ = sample_tokens
    index = BM25Index.build(docs)
    once = index.get_scores(["寿司"])
    assert once.max() > 0
    np.testing.assert_allclose(index.get_scores(["寿司", "寿司", "寿司"]), 3 * once)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, sample_tokens, mmap):
    docs, queries = sample_tokens
    index = BM25Index.build(docs, BM25Params(k1=1.2, b=0.7))
    index.save(tmp_path / "bm25")
    assert not list((tmp_path / "bm25").glob("*.pkl"))
    loaded = BM25Index.load(tmp_path / "bm25", BM25Params(k1=1.2, b=0.7), mmap=mmap)
    assert isinstance(loaded.weights.base, np.memmap) == mmap  # pages mapped, not read
    assert loaded.vocab == index.vocab
    for q in queries:
        np.testing.assert_array_equal(loaded.get_scores(q), index.get_scores(q))
        for a, b in zip(loaded.top_k(q, 10), index.top_k(q, 10), strict=True):
            np.testing.assert_array_equal(a, b)


def test_params_validated():
    with pytest.raises(ConfigError):
        BM25Params(b=1.5)
    with pytest.raises(ConfigError):
        BM25Params(dtype="int8")


def test_batch_term_counting_short_and_long_queries():
    """Batches count repeated terms like single queries, by scanning (short queries) or by a
    vocabulary table (long ones, e.g. a whole document as the query)."""
    ngram = get_analyzer({"ngram": {"n": 2, "weight": 0.3}})
    docs = [ngram.tokenize(f"{r['title']} {r['text']}") for r in sample_rows()]
    index = BM25Index.build(docs)
    long_query = docs[0] * 3 + ["未知語"] + docs[1]
    assert len(long_query) > kernels._SCAN_MAX_TOKENS
    short = [ngram.tokenize(q) for q in ("富士山の高さは", "寿司 寿司 寿司")]
    many = [short[1], long_query, [], short[0], long_query[::-1], ["寿司", "未知語", "寿司"]]
    for weight in (None, ngram.term_weight):
        indptr, terms, counts = index._batch_terms(many, weight)
        for q, lo, hi in zip(many, indptr[:-1], indptr[1:], strict=True):
            want_terms, want_counts = index.query_terms(q, weight)
            np.testing.assert_array_equal(terms[lo:hi], want_terms)
            np.testing.assert_array_equal(counts[lo:hi], want_counts)
        for q, (pos, sc) in zip(many, index.top_k_batch(many, 5, weight=weight), strict=True):
            one = index.top_k(q, 5, weight=weight)
            np.testing.assert_array_equal(pos, one[0])
            np.testing.assert_array_equal(sc, one[1])
    assert not np.array_equal(
        index._batch_terms(short, None)[2], index._batch_terms(short, ngram.term_weight)[2]
    )


def test_compiled_kernels_are_cached_outside_the_source_tree():
    """Running the suite never writes into the checkout (numba caches beside its kernels)."""
    from tansaku.index import dense_kernels

    repo = Path(__file__).resolve().parent.parent
    cached = [f for m in (kernels, dense_kernels) for f in vars(m).values() if hasattr(f, "_cache")]
    assert len(cached) >= 5
    for kernel in cached:
        assert repo not in Path(kernel._cache._cache_path).resolve().parents, kernel

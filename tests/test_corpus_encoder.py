"""The corpus encoder: trained offline on the sample corpus, saved as a plain sentence-transformers model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tansaku.index import SAMPLE_CORPUS, read_file
from tansaku.index.analyzer import get_analyzer
from tansaku.index.encoders.corpus_encoder import (
    INFO_FILE,
    CorpusEncoder,
    CorpusEncoderConfig,
    build_tokenizer,
    load_corpus_encoder,
)
from tansaku.index.encoders.corpus_pairs import mine_pairs, split_sentences
from tansaku.index.encoders.corpus_training import train_corpus_encoder
from tansaku.index.errors import ConfigError, ModelLoadError

# Small and quick: ~260 pairs from the 56 sample documents, a few dozen steps.
FAST = CorpusEncoderConfig(dim=48, epochs=8, batch_size=32)


def sample_docs() -> list[tuple[str, str]]:
    return [(r.title, r.text) for r in read_file(SAMPLE_CORPUS)]


def doc_texts(docs: list[tuple[str, str]]) -> list[str]:
    return [f"{title} {text}" if title else text for title, text in docs]


def weights(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))["embedding.weight"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    messages: list[str] = []
    out = train_corpus_encoder(
        sample_docs(),
        tmp_path_factory.mktemp("corpus") / "encoder",
        CorpusEncoderConfig(dim=64, epochs=20, batch_size=32),
        progress=False,
        log=messages.append,
    )
    return out, messages


def test_plain_sentence_transformer_gives_tansakus_vectors(trained: tuple[Path, list[str]]) -> None:
    from sentence_transformers import SentenceTransformer

    path, _ = trained
    encoder = load_corpus_encoder(path)
    plain = SentenceTransformer(str(path))
    queries = ["富士山の高さは？", "東京タワーはいつ完成した", "search engine", "ＡＢＣ　全角"]
    docs = doc_texts(sample_docs())[:10]
    np.testing.assert_allclose(
        plain.encode(queries, normalize_embeddings=True), encoder.encode_queries(queries), atol=1e-5
    )
    np.testing.assert_allclose(
        plain.encode(docs, normalize_embeddings=True), encoder.encode_documents(docs), atol=1e-5
    )


def test_vectors_are_float32_normalised_with_the_configured_dim(trained: tuple[Path, list[str]]) -> None:
    encoder = load_corpus_encoder(trained[0])
    assert encoder.dim == 64
    for vectors in (
        encoder.encode_queries(["京都の寺", "未知語ｘｙｚ🙂"]),
        encoder.encode_documents(doc_texts(sample_docs())[:5]),
    ):
        assert vectors.dtype == np.float32
        assert vectors.shape[1] == 64
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_to_config_describes_a_bundled_encoder(trained: tuple[Path, list[str]]) -> None:
    encoder = load_corpus_encoder(trained[0])
    config = encoder.to_config()
    assert isinstance(encoder, CorpusEncoder) and encoder.name == "corpus"
    assert config["type"] == "corpus" and config["path"] == "encoder" and config["bundled"] is True
    assert config["dim"] == 64 and config["training"]["seed"] == 42
    assert CorpusEncoderConfig.from_dict(config["training"]) == encoder.config


def test_log_reports_pairs_vocabulary_and_time(trained: tuple[Path, list[str]]) -> None:
    path, messages = trained
    text = "\n".join(messages)
    assert "pairs mined" in text and "vocabulary" in text and "steps in" in text
    stats = load_corpus_encoder(path).stats
    assert stats["docs"] == 56 and stats["pairs_used"] == stats["pairs_mined"] > 56


def sentence_ranks(encoder: CorpusEncoder) -> list[int]:
    """Rank of each of 10 documents for its own second sentence, with that sentence taken out of it.

    The inverse-cloze task: only the rest of the paragraph (topic words) can match, so an
    untrained random-init model fails it (measured: 0/10 in the top 3) and a working one does
    not (10/10 for every seed tried).
    """
    picks = list(range(0, 50, 5))  # 10 Japanese documents spread over the sample corpus
    queries, texts = [], []
    for i, (title, text) in enumerate(sample_docs()):
        if i in picks:
            sentences = split_sentences(text)
            queries.append(sentences[1])
            text = "".join(sentences[:1] + sentences[2:])
        texts.append(f"{title} {text}")
    scores = encoder.encode_queries(queries) @ encoder.encode_documents(texts).T
    order = np.argsort(-scores, axis=1)
    return [int(np.flatnonzero(order[k] == i)[0]) for k, i in enumerate(picks)]


def test_a_sentence_finds_its_own_document(trained: tuple[Path, list[str]]) -> None:
    ranks = sentence_ranks(load_corpus_encoder(trained[0]))
    assert sum(r < 3 for r in ranks) >= 7, f"ranks of the right documents: {ranks}"


def test_training_itself_learns_the_task(tmp_path: Path) -> None:
    """From random vectors (no LSA start), only the contrastive training can make this pass."""
    config = CorpusEncoderConfig(dim=64, epochs=20, batch_size=32, init="random")
    trained = load_corpus_encoder(train_corpus_encoder(sample_docs(), tmp_path / "t", config, progress=False))
    assert sum(r < 3 for r in sentence_ranks(trained)) >= 7
    untrained = CorpusEncoderConfig(dim=64, epochs=0, init="random")
    baseline = load_corpus_encoder(
        train_corpus_encoder(sample_docs(), tmp_path / "u", untrained, progress=False)
    )
    assert sum(r < 3 for r in sentence_ranks(baseline)) <= 3  # the check can fail


def test_training_is_deterministic_per_seed(tmp_path: Path) -> None:
    docs = sample_docs()
    a = train_corpus_encoder(docs, tmp_path / "a", FAST, progress=False)
    b = train_corpus_encoder(docs, tmp_path / "b", FAST, progress=False)
    c = train_corpus_encoder(
        docs, tmp_path / "c", CorpusEncoderConfig(**{**FAST.to_dict(), "seed": 7}), progress=False
    )
    assert np.array_equal(weights(a), weights(b))
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    queries = ["富士山の高さ", "日本の首都"]
    np.testing.assert_array_equal(
        load_corpus_encoder(a).encode_queries(queries), load_corpus_encoder(b).encode_queries(queries)
    )
    assert not np.allclose(weights(a), weights(c), atol=1e-4)


def test_pair_cap_is_respected(tmp_path: Path) -> None:
    messages: list[str] = []
    config = CorpusEncoderConfig(dim=16, epochs=1, batch_size=16, max_pairs=40)
    path = train_corpus_encoder(sample_docs(), tmp_path / "enc", config, progress=False, log=messages.append)
    stats = load_corpus_encoder(path).stats
    assert stats["pairs_used"] == 40 < stats["pairs_mined"]
    assert stats["steps"] == 3  # ceil(40 / 16) batches of the one epoch
    assert any("40 used" in m for m in messages)


def test_plain_texts_without_titles_and_the_words_analyzer(tmp_path: Path) -> None:
    texts = [r.text for r in read_file(SAMPLE_CORPUS) if r.metadata.get("lang") == "en"] * 3
    config = CorpusEncoderConfig(dim=16, epochs=2, batch_size=8)
    path = train_corpus_encoder(texts, tmp_path / "enc", config, analyzer="words", progress=False)
    vectors = load_corpus_encoder(path).encode_queries(["search engine"])
    assert vectors.shape == (1, 16)


def test_pairs_come_from_titles_sentences_and_halves() -> None:
    text = "一つ目の文です。二つ目の文です！短い。三つ目の文ですか？"
    pairs = list(mine_pairs("題名", text, 3))
    assert (pairs[0].anchor, pairs[0].positive) == ("題名", text)
    ict = {p.anchor: p.positive for p in pairs[1:-1]}
    assert ict["二つ目の文です！"] == "題名 一つ目の文です。短い。三つ目の文ですか？"
    assert "短い。" not in ict  # too short to be a useful query
    assert (pairs[-1].anchor, pairs[-1].positive) == (
        "一つ目の文です。二つ目の文です！",
        "短い。三つ目の文ですか？",
    )
    assert {p.doc for p in pairs} == {3}
    assert list(mine_pairs("", "一文だけ。", 0)) == []
    assert split_sentences("「引用です。」と言った。\nOne. Two is 3.5 m") == [
        "「引用です。」",
        "と言った。",
        "One.",
        "Two is 3.5 m",
    ]


def test_pairs_of_a_long_document_stay_short() -> None:
    """Each positive is the text around its sentence, not the whole document (memory stays linear)."""
    text = "".join(f"これは{i}番目の長い文です。" for i in range(500))
    pairs = list(mine_pairs("題名", text, 0, max_context_chars=100))
    assert len(pairs) == 502
    assert max(len(p.anchor) for p in pairs) <= 100
    assert max(len(p.positive) for p in pairs) <= len("題名 ") + 100
    around = {p.anchor: p.positive for p in pairs}["これは250番目の長い文です。"]
    assert "249番目" in around and "251番目" in around and "これは250番目" not in around


def test_tokenizer_splits_like_the_analyzer() -> None:
    """The saved tokenizer (no MeCab inside) reproduces MeCab's words on the text it was built from."""
    analyzer = get_analyzer("ja-surface")  # what the builder gives the corpus encoder
    texts = doc_texts(sample_docs())[:50]
    tokenizer = build_tokenizer(texts, analyzer)
    same = sum(tokenizer.encode(t, add_special_tokens=False).tokens == analyzer.tokenize(t) for t in texts)
    assert same >= 0.7 * len(texts)
    assert "".join(tokenizer.encode("ＴＯＫＹＯ", add_special_tokens=False).tokens) == "tokyo"  # NFKC + lower


def test_too_small_or_wrong_input_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training pair"):
        train_corpus_encoder(["一文だけ。"], tmp_path / "enc", FAST, progress=False)
    with pytest.raises(ConfigError, match="title, text"):
        train_corpus_encoder(
            [{"title": "t", "text": "x"}],
            tmp_path / "enc",
            FAST,  # type: ignore[list-item]
            progress=False,
        )
    with pytest.raises(ConfigError, match="batch_size"):
        CorpusEncoderConfig(batch_size=1)


def test_loading_a_directory_that_is_not_a_corpus_encoder_fails(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=INFO_FILE):
        load_corpus_encoder(tmp_path)

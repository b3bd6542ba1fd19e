"""Analyzers: Japanese MeCab surface forms and regex words, both NFKC + lowercase."""

from __future__ import annotations

import pytest

from tansaku.index import ConfigError, get_analyzer
from tansaku.index.analyzer import analyzer_from_config


def test_japanese_surface_forms_normalised():
    ja = get_analyzer("ja")
    tokens = ja.tokenize("東京タワーは１９５８年に完成した。ＡＩ　ｺｰﾋｰ")
    assert tokens[:2] == ["東京", "タワー"]
    assert "1958" in tokens and "ai" in tokens and "コーヒー" in tokens
    assert all(t.strip() for t in tokens)  # no whitespace tokens


def test_word_analyzer_lowercases_and_splits():
    assert get_analyzer("words").tokenize("Hello, ＷＯＲＬＤ! e-mail 2020") == [
        "hello", "world", "e", "mail", "2020"]


def test_config_round_trip_and_errors():
    for name in ("ja", "words"):
        a = get_analyzer(name)
        assert analyzer_from_config(a.to_config()).to_config() == a.to_config()
    with pytest.raises(ConfigError, match="unknown analyzer 'xx'"):
        get_analyzer("xx")
    with pytest.raises(ConfigError, match="rebuild"):
        analyzer_from_config({"name": "ja", "form": "lemma"})

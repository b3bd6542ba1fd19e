"""Analyzers: the Japanese pipeline (normalise, segment, form, POS filter, n-grams), presets,
manifest round trips, the legacy manifest, multi-process tokenisation, the CLI."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import unicodedata

import fugashi
import numpy as np
import pytest

from helpers import sample_rows, write_jsonl
from tansaku.index import BuildConfig, ConfigError, Index, build_index, get_analyzer, read_dicts
from tansaku.index.analyzer import (
    DEFAULT_DROP_POS,
    NGRAM_PREFIX,
    AnalyzerOptions,
    JapaneseAnalyzer,
    NgramOptions,
    analyzer_from_config,
    char_ngrams,
)
from tansaku.index.normalize import PROLONGED_LOOKALIKES, STEPS, Normalizer
from tansaku.index.tokenize_workers import default_workers, resolve_workers, tokenize_all
from tansaku.pipeline.eval.datasets import load_jsquad
from tansaku.retrieve import BM25Retriever

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
JA = get_analyzer("ja")
SURFACE = get_analyzer("ja-surface")


def words_of(text: str, **options) -> list[str]:
    """The word stream of ``text``: surface forms, the standard drop list, no n-grams, unless
    ``options`` say otherwise (over the ``ja`` preset's normaliser)."""
    base = {"form": "surface", "drop_pos": list(DEFAULT_DROP_POS), "ngram": None}
    return get_analyzer({**base, **options}).tokenize(text)


# -- normalisation -----------------------------------------------------------------------------


def test_full_width_ascii_is_folded_and_lowercased():
    norm = Normalizer()
    assert norm("ＡＢＣ　ｄｅｆ１２３！") == "abc def123!"
    assert Normalizer(nfkc=False)("ＡＢＣ１２３") == "ａｂｃ１２３"  # lower only
    assert Normalizer(lower=False)("ＡＢＣ") == "ABC"
    assert "1958" in JA.tokenize("東京タワーは１９５８年に完成した")


def test_half_width_katakana_become_full_width():
    assert Normalizer()("ｺｰﾋｰ ｶﾞｯｺｳ ﾊﾟﾝ") == "コーヒー ガッコウ パン"
    no_nfkc = Normalizer(nfkc=False, kana_width=True)
    assert no_nfkc("ｺｰﾋｰ ｶﾞｯｺｳ ﾊﾟﾝ｡") == "コーヒー ガッコウ パン。"
    assert no_nfkc("ＡＢ") == "ａｂ"  # kana width only: full-width letters stay
    assert Normalizer(nfkc=False, kana_width=False)("ｶﾞｯｺｳ") == "ｶﾞｯｺｳ"


@pytest.mark.parametrize("mark", list(PROLONGED_LOOKALIKES))
def test_each_prolonged_mark_variant_is_unified(mark):
    norm = Normalizer()
    assert norm(f"コンピュ{mark}タ") == "コンピュータ"  # inside katakana
    assert norm(f"スーパ{mark}") == "スーパー"  # after katakana, at the end
    assert norm(f"スーパ{mark}で") == "スーパーで"  # after katakana, before hiragana
    assert norm(f"ｺﾝﾋﾟｭ{mark}ﾀ") == "コンピュータ"  # half-width katakana too
    assert Normalizer(nfkc=False)(f"ｺﾝﾋﾟｭ{mark}ﾀ") == "ｺﾝﾋﾟｭーﾀ"


def test_prolonged_marks_elsewhere_are_left_alone():
    norm = Normalizer()
    assert norm("1-2 abc-def 東京-大阪 あ〜い") == "1-2 abc-def 東京-大阪 あ〜い"
    assert norm("タイプ-2 ボード-board") == "タイプ-2 ボード-board"  # a real hyphen before Latin/digits
    assert norm("スーーパ～～") == "スーパー"  # runs collapse to one mark
    assert Normalizer(prolonged=False)("スーパ－") == "スーパ-"
    # The analyzer sees one word where the look-alike used to split it.
    assert "スーパーマーケット" in words_of("スーパ－マーケット")
    assert "スーパーマーケット" not in SURFACE.tokenize("スーパ－マーケット")


def test_repetition_marks_are_expanded_only_when_asked():
    rep = Normalizer(repetition=True)
    assert rep("時々 人々 いすゞ こゝろ ハヽ バヾ") == "時時 人人 いすず こころ ハハ ババ"
    assert rep("あ々 カゝ") == "あ々 カゝ"  # a mark after a character it cannot repeat stays
    assert Normalizer()("時々 いすゞ") == "時々 いすゞ"  # off by default


def test_control_characters_become_spaces_and_never_cut_the_text():
    assert Normalizer()("東京\x00タワー\x1fです") == "東京 タワー です"
    assert words_of("東京\x00タワー") == ["東京", "タワー"]
    assert NGRAM_PREFIX + "タワ" in JA.tokenize("東京\x00タワー")


def test_normalizer_steps_round_trip_and_errors():
    for n in range(len(STEPS) + 1):
        for steps in itertools.combinations(STEPS, n):
            assert Normalizer.from_steps(list(steps)).steps() == list(steps)
    with pytest.raises(ConfigError, match="'normalize': unknown step"):
        Normalizer.from_steps(["nfkc", "stem"])


# -- token form and part-of-speech filter -------------------------------------------------------


def test_lemma_form_strips_unidic_subdivisions():
    tokens = words_of("コンピューターを使った。人々が行った。スーパーのボード", form="lemma")
    assert tokens == ["コンピューター", "使う", "人々", "行う", "スーパー", "ボード"]
    assert "-" not in "".join(words_of("ベトナムとオウシュウ", form="lemma"))


def test_lemma_keeps_numbers_and_falls_back_to_surface():
    tokens = words_of("１９５８年に２３個、xyzzyqq", form="lemma")
    assert tokens[:4] == ["1958", "年", "23", "個"]
    assert tokens[-1] == "xyzzyqq"  # unknown word: no lemma, its surface


def test_pos_filter_drops_particles_auxiliaries_symbols():
    assert words_of("東京タワーは1958年に完成した。") == ["東京", "タワー", "1958", "年", "完成", "し"]
    kept = words_of("東京タワーは1958年に完成した。", drop_pos=["助詞"])
    assert kept == ["東京", "タワー", "1958", "年", "完成", "し", "た", "。"]
    assert words_of("東京、タワー", drop_pos=[]) == ["東京", "、", "タワー"]
    # Prefixes match whole levels: "名詞-数詞" drops numbers, "名" matches nothing.
    assert words_of("3個の本", drop_pos=["名詞-数詞"] + list(DEFAULT_DROP_POS)) == ["個", "本"]
    assert words_of("3個の本", drop_pos=["名"]) == ["3", "個", "の", "本"]


def test_a_query_of_only_particles_falls_back_to_its_words(tmp_path):
    assert words_of("のはが") == ["の", "は", "が"]
    assert JA.tokenize("のは")[:2] == ["の", "は"]
    # ... and finds the one document made only of such words, which fell back the same way.
    docs = [{"id": "a", "text": "東京の空"}, {"id": "b", "text": "のは"}, {"id": "c", "text": "富士山"}]
    index = build_index(tmp_path / "idx", read_dicts(docs), progress=False)
    assert [h.doc_id for h in BM25Retriever(index).retrieve("のは", 10)][0] == "b"


# -- character n-grams -------------------------------------------------------------------------


def test_char_ngrams_of_runs():
    assert char_ngrams(["東京都", "a", "ab"], 2) == ["東京", "京都", "a", "ab"]
    assert char_ngrams(["東京都"], 3) == ["東京都"]


def test_ngram_stream_is_prefixed_and_matches_across_segmentation():
    tokens = JA.tokenize("東京都庁。")
    grams = [t for t in tokens if t.startswith(NGRAM_PREFIX)]
    assert [g[1:] for g in grams] == ["東京", "京都", "都庁"]
    assert all(not t.startswith(NGRAM_PREFIX) for t in tokens[: len(tokens) - len(grams)])
    # "京都" is no word of this text, but its bigram matches a query for 京都.
    assert NGRAM_PREFIX + "京都" in tokens and "京都" not in tokens
    text_src = get_analyzer({"ngram": {"n": 2, "source": "text"}})
    word_src = get_analyzer({"ngram": {"n": 2, "source": "words"}})
    assert text_src.analyze("東京は大きい")[1] == ["東京", "京は", "は大", "大き", "きい"]
    assert word_src.analyze("東京は大きい")[1] == ["東京", "大き", "きい"]  # never across "は"


def test_ngram_weight_scales_only_ngram_terms():
    heavy = get_analyzer({"ngram": {"n": 2, "weight": 0.25}})
    assert heavy.term_weight(NGRAM_PREFIX + "東京") == 0.25 and heavy.term_weight("東京") == 1.0


# -- presets, options, manifests -----------------------------------------------------------------


def test_ja_surface_is_exactly_the_previous_analyzer(jsquad_path):
    tagger = fugashi.Tagger()

    def previous(text):  # the old JapaneseAnalyzer.tokenize, verbatim
        import re

        control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
        norm = control.sub(" ", unicodedata.normalize("NFKC", text)).lower()
        return [w.surface for w in tagger(norm) if w.surface.strip()]

    ds = load_jsquad(jsquad_path)
    texts = [f"{d['title']} {d['text']}" for d in ds.corpus[:300]] + list(ds.queries.values())[:300]
    texts += ["ＡＩ　ｺｰﾋｰ スーパ－ 時々 \x00 の は"]
    assert all(SURFACE.tokenize(t) == previous(t) for t in texts)


def test_presets_and_their_configs():
    assert SURFACE.to_config() == {
        "name": "ja-surface",
        "tokenizer": "mecab",
        "dictionary": "unidic-lite",
        "normalize": ["nfkc", "lower"],
        "form": "surface",
        "drop_pos": [],
        "ngram": None,
    }
    config = JA.to_config()
    assert config["name"] == "ja" and config["form"] == "lemma"
    assert config["drop_pos"] == [*DEFAULT_DROP_POS, "代名詞", "動詞-非自立可能"]
    assert config["ngram"] == {"n": 2, "source": "text", "weight": 0.3}
    assert config["normalize"] == ["nfkc", "prolonged", "lower"]
    # The tuned preset at work: lemmas, no pronoun/light verb/particle, weighted bigrams.
    assert JA.analyze("何をしましたか")[0] == ["何", "を", "為る", "ます", "た", "か"]  # all dropped
    assert JA.analyze("東京で走った")[0] == ["トウキョウ", "走る"]
    assert get_analyzer("words").tokenize("Hello, ＷＯＲＬＤ! e-mail 2020") == [
        "hello",
        "world",
        "e",
        "mail",
        "2020",
    ]
    # JSON options naming exactly a preset's options get that preset's name; others "custom".
    assert get_analyzer({"preset": "ja-surface"}).name == "ja-surface"
    assert get_analyzer('{"form": "lemma"}').name == "ja"  # ja already uses lemmas
    assert get_analyzer('{"form": "surface"}').name == "custom"


ALL_OPTIONS = [
    AnalyzerOptions(normalize=Normalizer.from_steps(list(steps)), form=form, drop_pos=drop, ngram=ngram)
    for steps in (("nfkc", "lower"), STEPS, ("prolonged",), ())
    for form in ("surface", "lemma")
    for drop in ((), DEFAULT_DROP_POS, ("助詞", "名詞-数詞"))
    for ngram in (None, NgramOptions(), NgramOptions(n=3, source="words", weight=0.5))
]


def test_manifest_round_trip_of_every_option():
    text = "ＡＩのｺﾝﾋﾟｭｰﾀｰは時々１９５８年にスーパ－で使われた。"
    for options in ALL_OPTIONS:
        analyzer = JapaneseAnalyzer(options, "custom")
        config = json.loads(json.dumps(analyzer.to_config()))  # as stored in manifest.json
        again = analyzer_from_config(config)
        assert again.to_config() == config and again.options == options
        assert again.tokenize(text) == analyzer.tokenize(text)
    assert len({json.dumps(JapaneseAnalyzer(o).to_config()) for o in ALL_OPTIONS}) == len(ALL_OPTIONS)
    for name in ("ja", "ja-surface", "words"):
        config = get_analyzer(name).to_config()
        assert analyzer_from_config(config).to_config() == config


def test_json_options_through_a_real_index(tmp_path):
    options = {
        "form": "lemma",
        "normalize": ["nfkc", "repetition", "prolonged", "lower"],
        "drop_pos": ["助詞"],
        "ngram": {"n": 3, "source": "words", "weight": 0.5},
    }
    index = build_index(
        tmp_path / "idx",
        read_dicts(sample_rows()[:8]),
        BuildConfig(analyzer=json.dumps(options, ensure_ascii=False)),
        progress=False,
    )
    stored = json.loads((tmp_path / "idx" / "manifest.json").read_text(encoding="utf-8"))["analyzer"]
    assert stored == {"name": "custom", "tokenizer": "mecab", "dictionary": "unidic-lite", **options}
    reopened = Index.open(tmp_path / "idx")
    assert reopened.analyzer.to_config() == stored
    assert BM25Retriever(reopened).retrieve("富士山の高さ", 3) == BM25Retriever(index).retrieve(
        "富士山の高さ", 3
    )


def test_an_index_written_by_the_previous_version_opens_as_ja_surface(tmp_path):
    rows = sample_rows()
    index = build_index(
        tmp_path / "old", read_dicts(rows), BuildConfig(analyzer="ja-surface"), progress=False
    )
    expected = BM25Retriever(index).retrieve("検索エンジンの仕組み", 10)
    index.close()
    manifest_path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["analyzer"] = {"name": "ja", "form": "surface", "normalize": ["nfkc", "lower"]}
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    old = Index.open(tmp_path / "old")
    assert old.analyzer.name == "ja-surface" and old.analyzer.options.ngram is None
    assert BM25Retriever(old).retrieve("検索エンジンの仕組み", 10) == expected


def test_option_errors_name_the_option():
    with pytest.raises(ConfigError, match="unknown analyzer 'xx'"):
        get_analyzer("xx")
    with pytest.raises(ConfigError, match="'form' must be one of"):
        get_analyzer({"form": "stem"})
    with pytest.raises(ConfigError, match=r"'ngram.n' must be an integer"):
        get_analyzer({"ngram": {"n": 0.5}})
    with pytest.raises(ConfigError, match=r"'ngram.weight'"):
        get_analyzer({"ngram": {"weight": -1}})
    with pytest.raises(ConfigError, match=r"unknown analyzer option\(s\) \['ngram.size'\]"):
        get_analyzer({"ngram": {"size": 2}})
    with pytest.raises(ConfigError, match=r"unknown analyzer option\(s\) \['lemma'\]"):
        get_analyzer({"lemma": True})
    with pytest.raises(ConfigError, match="'drop_pos' must be a list"):
        get_analyzer({"drop_pos": "助詞"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        get_analyzer("{form: lemma}")
    with pytest.raises(ConfigError, match="rebuild"):
        analyzer_from_config({"name": "ja", "form": "lemma"})  # an unknown old-style config
    with pytest.raises(ConfigError, match="rebuild"):
        analyzer_from_config({"name": "words", "pattern": "[a-z]+", "normalize": ["nfkc"]})
    with pytest.raises(ConfigError, match="only mecab"):
        analyzer_from_config({**JA.to_config(), "dictionary": "ipadic"})


# -- multi-process tokenisation ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ja", "ja-surface", "words"])
def test_multi_process_tokens_equal_single_process(jsquad_path, name):
    ds = load_jsquad(jsquad_path)
    texts = [f"{d['title']} {d['text']}" for d in ds.corpus[:400]] + list(ds.queries.values())[:200]
    analyzer = get_analyzer(name)
    analyzer.tokenize("warm")  # a parent that already holds a Tagger still ships a fresh copy
    single = list(tokenize_all(analyzer, texts, progress=False))
    from tansaku.index.tokenize_workers import tokenize_parallel

    multi = list(
        tokenize_parallel(analyzer, iter(texts), total=len(texts), progress=False, workers=2, chunk_size=7)
    )  # many chunks, odd size: order matters
    assert multi == single and len(multi) == len(texts)


class OddTokens:
    """A custom analyzer whose tokens contain the workers' separator characters."""

    name = "odd"

    def tokenize(self, text):
        return ["", f"a\x1f{text}", "b\x1e"] if text else []

    def to_config(self):
        return {"name": self.name}


def test_workers_ship_any_tokens_back_unchanged():
    from tansaku.index.tokenize_workers import tokenize_parallel

    texts = ["x", "", "y z"] * 5
    got = list(tokenize_parallel(OddTokens(), texts, progress=False, workers=2, chunk_size=2))
    assert got == [OddTokens().tokenize(t) for t in texts]
    empty = list(
        tokenize_parallel(get_analyzer("ja"), ["", "。", "東京"], progress=False, workers=2, chunk_size=1)
    )
    assert empty == [JA.tokenize(t) for t in ["", "。", "東京"]] and empty[0] == []


def test_builder_with_workers_equals_single_process(tmp_path):
    rows = sample_rows()
    one = build_index(tmp_path / "one", read_dicts(rows), BuildConfig(workers=1), progress=False)
    two = build_index(tmp_path / "two", read_dicts(rows), BuildConfig(workers=2), progress=False)
    assert one.bm25.vocab == two.bm25.vocab
    np.testing.assert_array_equal(one.bm25.weights, two.bm25.weights)
    assert two.manifest.build.config["workers"] == 2


def test_default_workers():
    assert default_workers(100) == 1 and default_workers(5_000) == 1
    assert 1 <= default_workers(100_000) <= 4
    assert resolve_workers(None, 10) == 1 and resolve_workers(3, 10) == 3
    with pytest.raises(ConfigError, match="workers must be"):
        resolve_workers(-1, 10)


# -- CLI -------------------------------------------------------------------------------------------


def tansaku(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    return proc


@pytest.mark.slow
def test_cli_build_analyzers_and_bm25_params(tmp_path):
    docs = write_jsonl(tmp_path / "docs.jsonl", sample_rows()[:20])
    for spec, name in (
        ("ja", "ja"),
        ("ja-surface", "ja-surface"),
        ("words", "words"),
        ('{"form": "lemma", "ngram": null}', "custom"),
    ):
        proc = tansaku(
            "build",
            tmp_path / name,
            docs,
            "--analyzer",
            spec,
            "--encoder",
            "none",
            "--k1",
            "1.1",
            "--b",
            "0.6",
            "--quiet",
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((tmp_path / name / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["analyzer"]["name"] == name
        assert manifest["bm25"]["params"]["k1"] == 1.1 and manifest["bm25"]["params"]["b"] == 0.6
    proc = tansaku("build", tmp_path / "bad", docs, "--analyzer", '{"form": "stem"}', "--quiet")
    assert proc.returncode == 2 and "'form' must be one of" in proc.stderr
    help_text = tansaku("build", "--help").stdout
    for word in ("ja-surface", "words", "lemma", "n-gram", "--workers", "--k1"):
        assert word in help_text

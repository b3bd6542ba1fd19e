"""Text analyzers: text in, index terms out, identical for documents and queries.

An analyzer is chosen per index and stored in the manifest as a plain dict
(``to_config``/``analyzer_from_config``) recording every step and parameter, so a
query is always analysed the way the documents were, whatever later versions make
the default.

The Japanese analyzer is a small explicit pipeline (:class:`AnalyzerOptions`):
normalise the characters (:mod:`tansaku.index.normalize`), segment with MeCab
(fugashi + unidic-lite), keep each word's surface form or lemma, drop particles,
auxiliary verbs, symbols and whitespace by part of speech, and add the character
n-grams of the normalised text as a second token stream, so a query segmented
differently from a document still matches. Presets (:data:`PRESETS`):

* ``ja`` — the best configuration measured on JSQuAD (``scripts/tune_bm25.py``);
* ``ja-surface`` — plain MeCab surface forms of NFKC + lowercased text: the tokens of
  the JQaRA evaluator's BM25 baseline (rank-bm25 over fugashi surface forms);
* ``words`` — regex ``\\w+`` words for space-delimited languages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .errors import ConfigError
from .mecab import parsed
from .normalize import Normalizer

# Prepended to character n-gram tokens so they never collide with a word token: control
# characters cannot survive normalisation, so no word contains one.
NGRAM_PREFIX = "\x02"

# Part-of-speech prefixes (UniDic, "pos1-pos2-...") dropped by default: particles, auxiliary
# verbs, symbols and whitespace carry no topic. A prefix matches whole levels only.
DEFAULT_DROP_POS = ("助詞", "助動詞", "補助記号", "記号", "空白")
FORMS = ("surface", "lemma")
NGRAM_SOURCES = ("text", "words")


class Analyzer(Protocol):
    """Turns text into a list of terms."""

    name: str

    def tokenize(self, text: str) -> list[str]: ...

    def to_config(self) -> dict[str, Any]: ...


_LEGACY = Normalizer(prolonged=False)


def normalize(text: str) -> str:
    """NFKC (full-width ASCII → ASCII, half-width kana → full-width) and lowercase.

    Control characters become spaces: MeCab reads C strings, so a NUL would silently
    cut the rest of the text off. (The plain normaliser of ``ja-surface`` and ``words``.)
    """
    return _LEGACY(text)


@dataclass(frozen=True)
class NgramOptions:
    """Character n-grams as a second token stream (prefixed with :data:`NGRAM_PREFIX`).

    ``n``: gram length; a run of word characters shorter than ``n`` is one token as it
    is. ``source``: ``"text"`` takes the runs of word characters (``\\w+``) of the
    normalised text; ``"words"`` the runs of consecutive kept words, so grams never span
    a dropped particle. ``weight``: how much an n-gram counts against a word — each
    n-gram query term contributes ``weight`` × its BM25 weight.
    """

    n: int = 2
    source: str = "text"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= 8:
            raise ConfigError(f"analyzer option 'ngram.n' must be an integer 1-8, got {self.n!r}")
        if self.source not in NGRAM_SOURCES:
            raise ConfigError(
                f"analyzer option 'ngram.source' must be one of {NGRAM_SOURCES}, got {self.source!r}"
            )
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or not 0 < self.weight <= 100
        ):
            raise ConfigError(
                f"analyzer option 'ngram.weight' must be a number in (0, 100], got {self.weight!r}"
            )

    def to_config(self) -> dict[str, Any]:
        return {"n": self.n, "source": self.source, "weight": float(self.weight)}


@dataclass(frozen=True)
class AnalyzerOptions:
    """Every step of the Japanese analyzer and its parameters (recorded in the manifest).

    ``form``: ``"surface"`` (the text as written) or ``"lemma"`` (UniDic's lemma, its
    ``-English``/``-外国`` subdivision removed; numbers and words without a lemma keep
    their surface). ``drop_pos``: UniDic part-of-speech prefixes to drop; a text made
    only of dropped words keeps all its words instead (so a query of particles is never
    empty, and the same rule applies to documents so both sides stay identical).
    ``ngram``: the character n-gram stream, or None.

    The field defaults are the plain pipeline (surface forms, the standard drop list,
    bigrams of weight 1); the tuned ``ja`` preset is :data:`JA` (``PRESETS["ja"]``).
    """

    normalize: Normalizer = field(default_factory=Normalizer)
    form: str = "surface"
    drop_pos: tuple[str, ...] = DEFAULT_DROP_POS
    ngram: NgramOptions | None = field(default_factory=NgramOptions)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ConfigError(f"analyzer option 'form' must be one of {FORMS}, got {self.form!r}")
        if isinstance(self.drop_pos, str) or not all(isinstance(p, str) and p for p in self.drop_pos):
            raise ConfigError(
                "analyzer option 'drop_pos' must be a list of part-of-speech "
                f"prefixes such as '助詞', got {self.drop_pos!r}"
            )

    def to_config(self) -> dict[str, Any]:
        return {
            "tokenizer": "mecab",
            "dictionary": "unidic-lite",
            "normalize": self.normalize.steps(),
            "form": self.form,
            "drop_pos": list(self.drop_pos),
            "ngram": self.ngram.to_config() if self.ngram else None,
        }

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        base: AnalyzerOptions | None = None,
    ) -> AnalyzerOptions:
        """Options from a (possibly partial) manifest/JSON dict over ``base``."""
        base = base or cls()
        known = {"name", "preset", "tokenizer", "dictionary", "normalize", "form", "drop_pos", "ngram"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown analyzer option(s) {unknown}; known: {sorted(known)}")
        if (
            config.get("tokenizer", "mecab") != "mecab"
            or config.get("dictionary", "unidic-lite") != "unidic-lite"
        ):
            raise ConfigError(
                "analyzer options 'tokenizer'/'dictionary': only mecab with "
                f"unidic-lite is available, got {config.get('tokenizer')!r}/"
                f"{config.get('dictionary')!r}"
            )
        options = base
        if "normalize" in config:
            options = replace(options, normalize=Normalizer.from_steps(config["normalize"]))
        if "form" in config:
            options = replace(options, form=config["form"])
        if "drop_pos" in config:
            drop = config["drop_pos"]
            if not isinstance(drop, list | tuple):
                raise ConfigError(f"analyzer option 'drop_pos' must be a list, got {drop!r}")
            options = replace(options, drop_pos=tuple(drop))
        if "ngram" in config:
            options = replace(options, ngram=_ngram_from(config["ngram"], base.ngram))
        return options


def _ngram_from(value: Any, base: NgramOptions | None) -> NgramOptions | None:
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return replace(base or NgramOptions(), n=value)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"analyzer option 'ngram' must be null, an integer n or an object "
            f"{{n, source, weight}}, got {value!r}"
        )
    unknown = sorted(set(value) - {"n", "source", "weight"})
    if unknown:
        raise ConfigError(
            f"unknown analyzer option(s) {['ngram.' + u for u in unknown]}; "
            "known: ngram.n, ngram.source, ngram.weight"
        )
    return replace(base or NgramOptions(), **dict(value))


_WORD_CHARS = re.compile(r"[^\W_]+")


def char_ngrams(runs: Iterable[str], n: int) -> list[str]:
    """The ``n``-grams of each run (a run shorter than ``n`` is one gram)."""
    out: list[str] = []
    for run in runs:
        if len(run) <= n:
            out.append(run)
        else:
            out.extend(run[i : i + n] for i in range(len(run) - n + 1))
    return out


class JapaneseAnalyzer:
    """The MeCab (fugashi + unidic-lite) pipeline described by :class:`AnalyzerOptions`."""

    def __init__(self, options: AnalyzerOptions | None = None, name: str = "ja") -> None:
        self.options = options or AnalyzerOptions()
        self.name = name
        self._normalize = self.options.normalize
        self._drop = tuple(self.options.drop_pos)
        self._lemma = self.options.form == "lemma"
        # ja-surface reads only surfaces: the fastest path, and exactly the old analyzer.
        self._plain = not self._drop and not self._lemma
        ngram = self.options.ngram
        self._want_runs = ngram is not None and ngram.source == "words"
        self._drop_cache: dict[tuple[str, ...], bool] = {}

    def analyze(self, text: str) -> tuple[list[str], list[str]]:
        """The word stream and the (unprefixed) character n-gram stream of ``text``."""
        norm = self._normalize(text)
        words, runs = self._words(norm)
        ngram = self.options.ngram
        if ngram is None:
            return words, []
        if ngram.source == "text":
            runs = _WORD_CHARS.findall(norm)
        return words, char_ngrams(runs, ngram.n)

    def tokenize(self, text: str) -> list[str]:
        words, grams = self.analyze(text)
        if grams:
            words.extend(NGRAM_PREFIX + g for g in grams)
        return words

    def term_weight(self, term: str) -> float:
        """How much a query term counts (n-grams: ``ngram.weight``; words: 1)."""
        ngram = self.options.ngram
        return ngram.weight if ngram is not None and term.startswith(NGRAM_PREFIX) else 1.0

    @property
    def weighs_terms(self) -> bool:
        """Whether :meth:`term_weight` is anything but 1 for some term (weighted n-grams)."""
        ngram = self.options.ngram
        return ngram is not None and ngram.weight != 1.0

    def _words(self, norm: str) -> tuple[list[str], list[str]]:
        """Kept words, and the runs of consecutive kept surfaces (for ``ngram.source='words'``)."""
        if self._plain:
            with parsed(norm) as nodes:
                words = [w.surface for w in nodes if w.surface.strip()]
            return words, ["".join(words)] if words else []
        kept: list[str] = []
        every: list[str] = []
        surfaces: list[str] = []
        runs: list[str] = []
        run: list[str] = []
        lemma, want_runs, cache = self._lemma, self._want_runs, self._drop_cache
        with parsed(norm) as nodes:  # MeCab nodes are only valid inside this block
            for w in nodes:
                surface = w.surface
                if not surface.strip():
                    continue
                raw = w.feature_raw
                # Plain CSV unless a field holds a comma or quote (then fugashi's parser);
                # only the POS levels and the lemma (field 7) are read.
                fields = raw.split(",", 8) if '"' not in raw else list(w.feature)
                pos = tuple(fields[:4])
                dropped = cache.get(pos)
                if dropped is None:  # a few hundred POS tuples exist: decide each once
                    dropped = cache[pos] = self._dropped(pos)
                term = self._form(surface, fields) if lemma else surface
                every.append(term)
                if want_runs:
                    surfaces.append(surface)
                if dropped:
                    if run:
                        runs.append("".join(run))
                        run = []
                else:
                    kept.append(term)
                    if want_runs:
                        run.append(surface)
        if run:
            runs.append("".join(run))
        if not kept:  # only dropped words: keep them all rather than analyse to nothing
            return every, ["".join(surfaces)] if surfaces else []
        return kept, runs

    def _dropped(self, fields: tuple[str, ...]) -> bool:
        pos = "-".join(f for f in fields if f and f != "*")
        return any(pos == d or pos.startswith(d + "-") for d in self._drop)

    def _form(self, surface: str, fields: list[str]) -> str:
        # UniDic lemmas carry a subdivision after "-" ("コンピューター-computer",
        # "オウシュウ-外国"): the word is what precedes it. Numbers keep their digits.
        if len(fields) < 8 or fields[1] == "数詞" or not fields[7] or fields[7] == "*":
            return surface  # (fugashi's parser gives None where a field is missing)
        lemma = fields[7].split("-", 1)[0] or fields[7]
        return self._normalize(lemma)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.to_config()}


_WORD = re.compile(r"\w+", re.UNICODE)


class WordAnalyzer:
    """Regex ``\\w+`` words of NFKC-normalised, lowercased text (space-delimited languages)."""

    name = "words"

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(normalize(text))

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "pattern": _WORD.pattern, "normalize": ["nfkc", "lower"]}


JA_SURFACE = AnalyzerOptions(normalize=Normalizer(prolonged=False), form="surface", drop_pos=(), ngram=None)
# Chosen on JSQuAD's tune half (scripts/tune_bm25.py, README "Evaluation") with BM25 k1 0.3,
# b 0.6 (index/build_config.py PRESET_BM25): lemmas, pronouns (何, これ, どこ...) and light verbs
# (する, ある, いる, なる...) dropped as well, character bigrams of the text counting 0.3.
JA = AnalyzerOptions(
    form="lemma",
    drop_pos=(*DEFAULT_DROP_POS, "代名詞", "動詞-非自立可能"),
    ngram=NgramOptions(n=2, source="text", weight=0.3),
)

# Preset name -> options (None: the regex word analyzer).
PRESETS: dict[str, AnalyzerOptions | None] = {"ja": JA, "ja-surface": JA_SURFACE, "words": None}

# What the previous version wrote for its "ja" analyzer (MeCab surface forms): opened as
# ja-surface, which tokenises identically.
_LEGACY_JA = {"name": "ja", "form": "surface", "normalize": ["nfkc", "lower"]}


def get_analyzer(spec: str | Mapping[str, Any] = "ja") -> Analyzer:
    """A preset (``ja``, ``ja-surface``, ``words``) or options over one.

    ``spec`` may be a JSON object (string or dict) of :class:`AnalyzerOptions` fields,
    optionally with ``"preset"`` naming the base (default ``ja``), e.g.
    ``{"form": "lemma", "ngram": {"n": 3}}``.
    """
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"analyzer options are not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise ConfigError("analyzer options must be a JSON object")
    if isinstance(spec, Mapping):
        preset = str(spec.get("preset", "ja"))
        base = _preset(preset)
        if base is None:
            raise ConfigError(f"analyzer preset {preset!r} takes no options")
        options = AnalyzerOptions.from_config(spec, base)
        name = next((n for n, o in PRESETS.items() if o == options), "custom")
        return JapaneseAnalyzer(options, name)
    base = _preset(spec)
    return WordAnalyzer() if base is None else JapaneseAnalyzer(base, spec)


def _preset(name: str) -> AnalyzerOptions | None:
    if name not in PRESETS:
        raise ConfigError(
            f"unknown analyzer {name!r}; choose one of: {', '.join(PRESETS)} or a JSON object of options"
        )
    return PRESETS[name]


def analyzer_from_config(config: dict[str, Any]) -> Analyzer:
    """Rebuild the analyzer recorded in a manifest (every option is read from it)."""
    if config == _LEGACY_JA:
        return JapaneseAnalyzer(JA_SURFACE, "ja-surface")
    name = str(config.get("name"))
    if name == "words" or "tokenizer" not in config:
        analyzer: Analyzer = get_analyzer(name)
    else:
        if "preset" in config:
            raise ConfigError("a manifest's analyzer has no 'preset' option")
        analyzer = JapaneseAnalyzer(AnalyzerOptions.from_config(config, JA), name)
    if analyzer.to_config() != config:
        raise ConfigError(
            f"index analyzer {config} differs from this version's {analyzer.to_config()}; "
            "rebuild the index with this version of tansaku"
        )
    return analyzer

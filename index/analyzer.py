"""Text analyzers: text in, index terms out, identical for documents and queries.

An analyzer is chosen per index and stored in the manifest as a plain dict
(``to_config``/``analyzer_from_config``), so a query is always analysed the way
the documents were.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from tqdm.auto import tqdm

from .errors import ConfigError


class Analyzer(Protocol):
    """Turns text into a list of terms."""

    name: str

    def tokenize(self, text: str) -> list[str]: ...

    def to_config(self) -> dict[str, Any]: ...


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def normalize(text: str) -> str:
    """NFKC (full-width ASCII → ASCII, half-width kana → full-width) and lowercase.

    Control characters become spaces: MeCab reads C strings, so a NUL would silently
    cut the rest of the text off.
    """
    return _CONTROL.sub(" ", unicodedata.normalize("NFKC", text)).lower()


class JapaneseAnalyzer:
    """MeCab (fugashi + unidic-lite) surface forms of NFKC-normalised, lowercased text.

    This is the tokenisation the JQaRA evaluator's BM25 baseline uses, so scores
    are comparable with rank-bm25 over ``fugashi`` surface forms.
    """

    name = "ja"

    def __init__(self) -> None:
        self._tagger: Any = None

    @property
    def tagger(self) -> Any:
        # Created on first use: a Tagger is not picklable and costs ~50 ms to load.
        if self._tagger is None:
            try:
                import fugashi
                import unidic_lite  # noqa: F401  (the dictionary fugashi's default Tagger finds)
            except ImportError as exc:  # pragma: no cover - both are hard dependencies
                raise ConfigError(
                    "the Japanese analyzer needs fugashi and unidic-lite: pip install fugashi unidic-lite"
                ) from exc
            self._tagger = fugashi.Tagger()
        return self._tagger

    def tokenize(self, text: str) -> list[str]:
        return [word.surface for word in self.tagger(normalize(text)) if word.surface.strip()]

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "form": "surface", "normalize": ["nfkc", "lower"]}


_WORD = re.compile(r"\w+", re.UNICODE)


class WordAnalyzer:
    """Regex ``\\w+`` words of NFKC-normalised, lowercased text (space-delimited languages)."""

    name = "words"

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(normalize(text))

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "pattern": _WORD.pattern, "normalize": ["nfkc", "lower"]}


ANALYZERS: dict[str, type] = {"ja": JapaneseAnalyzer, "words": WordAnalyzer}


def get_analyzer(name: str) -> Analyzer:
    """The analyzer registered under ``name`` (``ja`` or ``words``)."""
    try:
        return ANALYZERS[name]()  # type: ignore[no-any-return]
    except KeyError:
        raise ConfigError(
            f"unknown analyzer {name!r}; choose one of: {', '.join(sorted(ANALYZERS))}"
        ) from None


def analyzer_from_config(config: dict[str, Any]) -> Analyzer:
    """Rebuild the analyzer recorded in a manifest."""
    analyzer = get_analyzer(str(config.get("name")))
    if analyzer.to_config() != config:
        raise ConfigError(
            f"index analyzer {config} differs from this version's {analyzer.to_config()}; "
            "rebuild the index with this version of tansaku"
        )
    return analyzer


def tokenize_all(analyzer: Analyzer, texts: Iterable[str], *, total: int | None = None,
                 progress: bool = True) -> Iterator[list[str]]:
    """Tokenise many texts with a progress bar."""
    for text in tqdm(texts, total=total, desc="tokenise", unit="doc", disable=not progress):
        yield analyzer.tokenize(text)

"""Character normalisation steps of the Japanese analyzer, each one switchable.

Steps run in a fixed order (control characters, ``nfkc``, ``kana_width``, ``repetition``,
``prolonged``, ``lower``), so a set of enabled steps fully describes the result and the
manifest can record it as a list of names.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .errors import ConfigError

# In application order; the manifest lists the enabled ones in this order.
STEPS = ("nfkc", "kana_width", "repetition", "prolonged", "lower")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Half-width katakana and their punctuation/sound marks (U+FF61-U+FF9F).
_HALF_KANA = re.compile(r"[\uff61-\uff9f]+")

# Characters written in place of the prolonged sound mark ー: the half-width ｰ, hyphens,
# dashes, minus signs and tildes/wave dashes, in full- and half-width (NFKC turns － into
# "-" and ～ into "~", so the ASCII forms must be covered too).
PROLONGED_LOOKALIKES = (
    "\u30fc"  # ー  katakana-hiragana prolonged sound mark (the target)
    "\uff70"  # ｰ  half-width prolonged sound mark
    "\u002d"  # -  hyphen-minus
    "\uff0d"  # －  full-width hyphen-minus
    "\u2010"  # ‐  hyphen
    "\u2011"  # ‑  non-breaking hyphen
    "\u2012"  # ‒  figure dash
    "\u2013"  # –  en dash
    "\u2014"  # —  em dash
    "\u2015"  # ―  horizontal bar
    "\u2212"  # −  minus sign
    "\u2500"  # ─  box drawings light horizontal (seen in OCR'd and old web text)
    "\u007e"  # ~  tilde
    "\uff5e"  # ～  full-width tilde
    "\u301c"  # 〜  wave dash
    "\u2053"  # ⁓  swung dash
    "\u223c"  # ∼  tilde operator
)
# Katakana (full- and half-width, small ㇰ-ㇿ, the mark itself): a look-alike run directly
# after one of these is a prolonged sound. A run followed by a Latin letter or digit is
# left alone: there it is a real hyphen ("タイプ-2", "ボード-board").
_KATAKANA = "\u30a1-\u30fa\u30fc\u31f0-\u31ff\uff66-\uff9f"
_PROLONGED = re.compile(
    f"(?<=[{_KATAKANA}])[{re.escape(PROLONGED_LOOKALIKES)}]+(?![0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a])"
)

_KANJI_REPEAT = "\u3005\u303b"  # 々 〻
_KANA_REPEAT = {
    "\u309d": (False, "hiragana"),
    "\u309e": (True, "hiragana"),  # ゝ ゞ
    "\u30fd": (False, "katakana"),
    "\u30fe": (True, "katakana"),
}  # ヽ ヾ


def _is_kanji(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def _unvoiced(ch: str) -> str:
    return unicodedata.normalize("NFD", ch)[0]


def _voiced(ch: str) -> str:
    composed = unicodedata.normalize("NFC", _unvoiced(ch) + "\u3099")
    return composed if len(composed) == 1 else _unvoiced(ch)


def expand_repetition_marks(text: str) -> str:
    """々/〻 repeat the kanji before them, ゝ/ヽ the kana before them, ゞ/ヾ voiced.

    A mark after a character it cannot repeat (々 after kana, ゝ after katakana...) is kept.
    """
    if not any(ch in text for ch in "\u3005\u303b\u309d\u309e\u30fd\u30fe"):
        return text
    out: list[str] = []
    for ch in text:
        prev = out[-1] if out else ""
        if ch in _KANJI_REPEAT and prev and _is_kanji(prev):
            out.append(prev)
        elif ch in _KANA_REPEAT and prev:
            voiced, script = _KANA_REPEAT[ch]
            ok = ("\u3041" <= prev <= "\u3096") if script == "hiragana" else ("\u30a1" <= prev <= "\u30fa")
            out.append((_voiced(prev) if voiced else _unvoiced(prev)) if ok else ch)
        else:
            out.append(ch)
    return "".join(out)


def unify_prolonged_marks(text: str) -> str:
    """Look-alikes of ー after katakana become one ー (a run collapses: スーーパ～ → スーパー)."""
    return _PROLONGED.sub("\u30fc", text)


def fold_kana_width(text: str) -> str:
    """Half-width katakana to full-width, voiced marks composed (ｶﾞｯｺｳ → ガッコウ)."""
    return _HALF_KANA.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)


@dataclass(frozen=True)
class Normalizer:
    """Which normalisation steps run (see the module docstring for the order).

    Control characters always become spaces: MeCab reads C strings, so a NUL would
    silently cut the rest of the text off (and token streams use them as separators).
    ``kana_width`` is what ``nfkc`` already does to kana; it exists for ``nfkc=False``.
    """

    nfkc: bool = True
    kana_width: bool = False
    repetition: bool = False
    prolonged: bool = True
    lower: bool = True

    @classmethod
    def from_steps(cls, steps: list[str] | tuple[str, ...]) -> Normalizer:
        """The normaliser running exactly ``steps`` (names from :data:`STEPS`)."""
        if isinstance(steps, str) or not all(isinstance(s, str) for s in steps):
            raise ConfigError(f"analyzer option 'normalize' must be a list of step names, got {steps!r}")
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ConfigError(
                f"analyzer option 'normalize': unknown step(s) {unknown}; choose from {list(STEPS)}"
            )
        return cls(**{name: name in steps for name in STEPS})

    def steps(self) -> list[str]:
        """The enabled steps, in application order (the manifest's ``normalize`` list)."""
        return [name for name in STEPS if getattr(self, name)]

    def __call__(self, text: str) -> str:
        text = _CONTROL.sub(" ", text)
        if self.nfkc:
            text = unicodedata.normalize("NFKC", text)
        if self.kana_width:
            text = fold_kana_width(text)
        if self.repetition:
            text = expand_repetition_marks(text)
        if self.prolonged:
            text = unify_prolonged_marks(text)
        if self.lower:
            text = text.lower()
        return text

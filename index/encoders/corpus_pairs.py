"""Self-supervised training pairs for the corpus encoder, mined from the corpus alone.

Each document gives (query-like, document-like) pairs: title → text, inverse cloze (a
sentence → title + the text around it) and first half → second half. :class:`Reservoir`
keeps a uniform, seeded sample of a stream, so training memory is bounded whatever the
corpus size.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..hit import indexed_text

# A sentence ends at a line break or after 。！？!? (full- or half-width, with any closing
# brackets/quotes), or after a "." followed by a space (English; "3.5" and "e.g" stay whole).
_SENTENCE = re.compile(r"[^\n]+?(?:[。！？!?]+[」』）)\]\"'”’]*|\.(?=\s)|$)", re.MULTILINE)


@dataclass(frozen=True)
class Pair:
    """A self-supervised training pair: a query-like ``anchor`` and the text it should find."""

    anchor: str
    positive: str
    doc: int  # document number: pairs of one document are never each other's negatives


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after 。！？!? (or ". "), and at line breaks; empty ones dropped."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def _context(sentences: list[str], skip: int, budget: int) -> str:
    """The sentences around ``sentences[skip]`` (itself left out), in text order, up to ``budget`` chars.

    Grows one sentence at a time on alternate sides, so the nearest context comes first; a
    neighbour too long for the budget is cut rather than leaving the context empty.
    """
    lo, hi, used = skip, skip + 1, 0
    grew = True
    while grew:
        grew = False
        if hi < len(sentences) and used + len(sentences[hi]) <= budget:
            used += len(sentences[hi])
            hi += 1
            grew = True
        if lo > 0 and used + len(sentences[lo - 1]) <= budget:
            lo -= 1
            used += len(sentences[lo])
            grew = True
    if used == 0:
        neighbour = sentences[skip + 1] if skip + 1 < len(sentences) else sentences[skip - 1]
        return neighbour[:budget]
    return "".join(sentences[lo:skip] + sentences[skip + 1 : hi])


def mine_pairs(
    title: str, text: str, doc: int, *, min_sentence_chars: int = 8, max_context_chars: int = 2_000
) -> Iterator[Pair]:
    """Self-supervised (query-like, document-like) pairs from one document.

    * title → text (a title is a short query about its text);
    * inverse cloze: each sentence → title + the paragraph *without* it, so the model must
      match a sentence by its topic rather than by copying (keeping the sentence in, or adding
      random crops of it as extra queries, measured no better on JSQuAD);
    * first half → second half of the sentences.

    Texts longer than ``max_context_chars`` are cut to the part nearest the anchor.
    """
    budget = max_context_chars
    title, text = title.strip(), text.strip()
    if title and text:
        yield Pair(title, text[:budget], doc)
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return
    for i, sentence in enumerate(sentences):
        if len(sentence) < min_sentence_chars:
            continue
        rest = _context(sentences, i, budget)
        yield Pair(sentence[:budget], indexed_text(title, rest), doc)
    half = len(sentences) // 2
    yield Pair("".join(sentences[:half])[-budget:], "".join(sentences[half:])[:budget], doc)


class Reservoir:
    """A uniform sample of at most ``size`` items from a stream (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.items: list[Any] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self._rng.randrange(self.seen + 1)
            if j < self.size:
                self.items[j] = item
        self.seen += 1

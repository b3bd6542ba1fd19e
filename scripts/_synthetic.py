"""The synthetic Japanese corpus the benchmarks share (documented in each script's --help).

The JSQuAD valid paragraphs are split into sentences on "。"; each synthetic document
concatenates 3-6 distinct-sentence draws from a seeded RNG, so term statistics look like
Japanese Wikipedia at any size. Each document also carries seeded metadata for filter
benchmarks: ``year`` (uniform 1990-2029), ``bucket`` (uniform 0-9999, so ``bucket < N`` selects
N/10,000 of the corpus) and ``lang`` ("ja").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np

SEED = 20260601
CHUNK = 100_000


def split_sentences(text: str) -> list[str]:
    """Sentences ending in "。" (the last one may lack it); blanks dropped."""
    return [s.strip() for s in re.findall(r"[^。]+。?", text) if s.strip()]


def jsquad_paragraphs(path: str | Path) -> list[str]:
    """Distinct JSQuAD paragraphs as "title text", in file order."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    seen: dict[str, None] = {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            title, _, text = paragraph["context"].partition("[SEP]")
            seen.setdefault(f"{title.strip()} {text.strip()}".strip(), None)
    return list(seen)


def sentences_of(paragraphs: Sequence[str]) -> list[str]:
    """Distinct sentences of the paragraphs, in first-seen order."""
    return list(dict.fromkeys(chain.from_iterable(split_sentences(p) for p in paragraphs)))


def synthetic_records(paragraphs: Sequence[str], n_docs: int, seed: int = SEED) -> Iterator[dict]:
    """``n_docs`` records ``{"id", "text", "year", "bucket", "lang"}``, deterministic for a seed.

    Generated in chunks so a 1M-document corpus streams without holding every text twice.
    """
    sentences = sentences_of(paragraphs)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_docs:
        n = min(CHUNK, n_docs - done)
        lengths = rng.integers(3, 7, size=n)
        picks = rng.integers(0, len(sentences), size=int(lengths.sum())).tolist()
        years = rng.integers(1990, 2030, size=n).tolist()
        buckets = rng.integers(0, 10_000, size=n).tolist()
        pos = 0
        for i in range(n):
            length = int(lengths[i])
            text = "".join(sentences[j] for j in picks[pos : pos + length])
            pos += length
            yield {
                "id": f"s{done + i:07d}",
                "text": text,
                "year": years[i],
                "bucket": buckets[i],
                "lang": "ja",
            }
        done += n

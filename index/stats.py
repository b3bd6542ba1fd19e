"""Corpus-wide BM25 statistics, so that shards score exactly as one index would.

A shard's BM25 weights need the whole corpus's document count, document frequencies,
total length and the mean idf of the epsilon floor. :class:`CorpusStats` holds them;
:meth:`CorpusStats.merge` reduces the shards' own statistics in shard order, so the
vocabulary keeps the first-occurrence order of an unsharded build; the mean idf of the
epsilon floor is an exactly rounded sum, so it is bit for bit the same in any term order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import load_array
from .atomic import write_json
from .errors import IndexFormatError


@dataclass(frozen=True)
class CorpusStats:
    """``n_docs`` documents of ``total_len`` tokens; ``df[i]`` documents contain ``vocab[i]``.

    Terms no document contains are never listed (an unsharded build drops them too).
    """

    n_docs: int
    total_len: int
    vocab: tuple[str, ...]
    df: np.ndarray

    @property
    def avgdl(self) -> float:
        return float(self.total_len) / self.n_docs if self.n_docs else 0.0

    @classmethod
    def of_shard(cls, vocab: Sequence[str], df: np.ndarray, doc_len: np.ndarray) -> CorpusStats:
        """The statistics of one shard (its vocabulary in first-occurrence order)."""
        df = np.asarray(df, dtype=np.int64)
        keep = np.flatnonzero(df > 0)
        return cls(
            n_docs=int(len(doc_len)),
            total_len=int(np.asarray(doc_len, dtype=np.int64).sum()),
            vocab=tuple(vocab[i] for i in keep.tolist()),
            df=df[keep],
        )

    @classmethod
    def merge(cls, shards: Iterable[CorpusStats]) -> CorpusStats:
        """The statistics of the shards' documents taken together, in shard order."""
        term_id: dict[str, int] = {}
        df: list[int] = []
        n_docs = total_len = 0
        for shard in shards:
            n_docs += shard.n_docs
            total_len += shard.total_len
            for term, count in zip(shard.vocab, shard.df.tolist(), strict=True):
                t = term_id.setdefault(term, len(term_id))
                if t == len(df):
                    df.append(count)
                else:
                    df[t] += count
        return cls(n_docs, total_len, tuple(term_id), np.asarray(df, dtype=np.int64))

    def idf(self, epsilon: float) -> np.ndarray:
        """rank-bm25's BM25Okapi idf per term, negative values floored at ε × the mean idf."""
        df = self.df.astype(np.int64)
        idf = np.log(self.n_docs - df + 0.5) - np.log(df + 0.5)
        # fsum: the correctly rounded sum, whatever the order of the terms. rank-bm25 adds in
        # first-occurrence order; no order is privileged once shards merge or updates append
        # terms, and an exact sum keeps every order bit for bit equal (within ~1e-16 of rank-bm25's).
        mean_idf = math.fsum(idf.tolist()) / len(idf) if len(idf) else 0.0
        idf[idf < 0] = epsilon * mean_idf
        return idf

    def idf_of(self, terms: Sequence[str], epsilon: float) -> np.ndarray:
        """:meth:`idf` of ``terms`` (each must be in the vocabulary)."""
        position = {term: i for i, term in enumerate(self.vocab)}
        return self.idf(epsilon)[np.fromiter((position[t] for t in terms), np.int64, len(terms))]

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """``df.npy`` + ``vocab.json`` in ``directory``; returns the manifest entry."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "df.npy", self.df)
        write_json(directory / "vocab.json", list(self.vocab), indent=None)
        return {"docs": self.n_docs, "total_len": self.total_len, "terms": len(self.vocab)}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], entry: dict[str, Any]) -> CorpusStats:
        import json

        directory = Path(directory)
        try:
            with open(directory / "vocab.json", encoding="utf-8") as fh:
                vocab = tuple(json.load(fh))
            df = np.asarray(load_array(directory / "df.npy", mmap=False), dtype=np.int64)
            stats = cls(int(entry["docs"]), int(entry["total_len"]), vocab, df)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"corpus statistics at {directory} are unreadable: {exc}") from exc
        if len(df) != len(vocab) or len(vocab) != entry.get("terms"):
            raise IndexFormatError(f"corpus statistics at {directory} disagree with the manifest")
        return stats

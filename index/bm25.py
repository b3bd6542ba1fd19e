"""BM25 (Okapi) as a precomputed sparse term × document weight matrix.

Scores equal rank-bm25's ``BM25Okapi`` exactly (same idf with the epsilon floor
for negative idf, same length normalisation, repeated query terms counted each
time); like bm25s, the per-(term, document) weights are computed once at build
time, so a query costs one gather over its terms' postings plus a top-k.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp

from . import bm25_kernels as kernels
from .arrays import load_array
from .atomic import write_json
from .checks import check_int
from .errors import ConfigError, IndexFormatError
from .stats import CorpusStats

_NO_MASK = np.zeros(0, dtype=np.bool_)

TermWeight = Callable[[str], float]  # how much one occurrence of a query token counts

_FILES = ("weights.npy", "tf.npy", "postings.npy", "indptr.npy", "doc_len.npy", "vocab.json")
BM25_FILES = _FILES  # what a saved BM25 index must hold
# Written since the dense rows were added; an index without them computes them on load.
_DENSE_FILES = ("dense_rows.npy", "dense_weights.npy")

# Terms in at least this share of the documents also get a dense row of weights: at 1/2 the
# row (8 bytes per document) takes no more room than the term's postings (doc id, weight and
# tf: 16 bytes per posting), and a query adds it in one SIMD pass instead of a scatter.
DENSE_DF_FRACTION = 0.5


@dataclass(frozen=True)
class BM25Params:
    """BM25Okapi parameters (rank-bm25's defaults) and the weight storage type.

    ``dtype="float64"`` keeps scores identical to rank-bm25 to ~1e-12;
    ``"float32"`` halves the weight matrix at ~1e-6 error.
    """

    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"BM25 dtype must be float32 or float64, got {self.dtype!r}")


_WEIGHT_BLOCK = 1 << 23  # postings per block of the weight computation


class BM25Index:
    """Postings of every term (CSC: ``indptr[t]:indptr[t+1]`` slices ``postings``/``weights``)."""

    def __init__(
        self,
        *,
        vocab: list[str],
        indptr: np.ndarray,
        postings: np.ndarray,
        tf: np.ndarray,
        weights: np.ndarray,
        doc_len: np.ndarray,
        params: BM25Params,
        dense_rows: np.ndarray | None = None,
        dense_weights: np.ndarray | None = None,
    ) -> None:
        self.vocab = vocab
        self.term_ids = {term: i for i, term in enumerate(vocab)}
        self.indptr = indptr
        self.postings = postings
        self.tf = tf
        self.weights = weights
        self.doc_len = doc_len
        self.params = params
        self._local = threading.local()
        # Per term: do all its weights add a positive amount (-1 = not yet known)? Filled
        # in by the kernel; 1 byte per term, small next to the vocabulary itself.
        self._positive = np.full(len(vocab), -1, np.int8)
        # Term -> row of dense_weights (-1: postings only); see DENSE_DF_FRACTION.
        if dense_rows is None or dense_weights is None:
            # from_doc_term constructs with no weights yet (a placeholder here) and sets the
            # rows itself once it has computed the weights
            dense_rows, dense_weights = (
                self._dense_columns()
                if weights.shape == postings.shape
                else (np.full(len(vocab), -1, np.int64), np.zeros((0, len(doc_len))))
            )
        self.dense_rows: np.ndarray = dense_rows
        self.dense_weights: np.ndarray = dense_weights

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, tokenized_docs: Iterable[Sequence[str]], params: BM25Params = BM25Params()) -> BM25Index:
        """Index documents given as token lists (position i = document i)."""
        vocab: dict[str, int] = {}
        doc_indptr = [0]
        term_chunks: list[np.ndarray] = []
        count_chunks: list[np.ndarray] = []
        doc_len: list[int] = []
        for tokens in tokenized_docs:
            counts = Counter(tokens)
            term_chunks.append(
                np.fromiter(
                    (vocab.setdefault(t, len(vocab)) for t in counts), dtype=np.int32, count=len(counts)
                )
            )
            count_chunks.append(np.fromiter(counts.values(), dtype=np.int32, count=len(counts)))
            doc_indptr.append(doc_indptr[-1] + len(counts))
            doc_len.append(len(tokens))
        terms = np.concatenate(term_chunks) if term_chunks else np.zeros(0, np.int32)
        counts_arr = np.concatenate(count_chunks) if count_chunks else np.zeros(0, np.int32)
        by_doc = sp.csr_matrix(
            (counts_arr, terms, np.asarray(doc_indptr, dtype=np.int64)), shape=(len(doc_len), len(vocab))
        )
        return cls.from_doc_term(by_doc, list(vocab), np.asarray(doc_len, np.int32), params)

    @classmethod
    def from_doc_term(
        cls,
        by_doc: sp.csr_matrix,
        vocab: list[str],
        doc_len: np.ndarray,
        params: BM25Params = BM25Params(),
        stats: CorpusStats | None = None,
    ) -> BM25Index:
        """Index a documents × terms matrix of term frequencies (the shared build path).

        Terms no document contains are dropped, so the vocabulary (and with it the
        mean idf of the epsilon floor) is exactly that of a fresh build. ``stats``: weigh
        with a whole corpus's statistics instead of these documents' own (a shard of it).
        """
        df = (
            np.bincount(by_doc.indices, minlength=len(vocab))
            if by_doc.nnz
            else np.zeros(len(vocab), np.int64)
        )
        keep = np.flatnonzero(df > 0)
        if len(keep) < len(vocab):
            by_doc = by_doc[:, keep]
            vocab = [vocab[i] for i in keep]
        # Documents × terms (CSR) to term-major postings (CSC) by scipy's C++ code.
        by_term = sp.csc_matrix(by_doc)
        by_term.sort_indices()
        index = cls(
            vocab=list(vocab),
            indptr=by_term.indptr.astype(np.int64),
            postings=by_term.indices.astype(np.int32),
            tf=by_term.data.astype(np.int32),
            weights=np.zeros(0),
            doc_len=np.asarray(doc_len, dtype=np.int32),
            params=params,
        )
        if stats is None:
            index.weights = index._compute_weights(index.corpus_stats())
        else:
            index.weights = index._compute_weights(stats, stats.idf_of(index.vocab, params.epsilon))
        index.dense_rows, index.dense_weights = index._dense_columns()
        return index

    def corpus_stats(self) -> CorpusStats:
        """This index's own statistics (a shard's share of a sharded index's)."""
        return CorpusStats.of_shard(self.vocab, np.diff(self.indptr), self.doc_len)

    def doc_term(self) -> sp.csr_matrix:
        """The documents × terms matrix of term frequencies (for incremental updates)."""
        by_term = sp.csc_matrix((self.tf, self.postings, self.indptr), shape=(self.n_docs, len(self.vocab)))
        return by_term.tocsr()

    def _compute_weights(self, stats: CorpusStats, idf: np.ndarray | None = None) -> np.ndarray:
        """Per-posting BM25 weights from term frequencies and corpus statistics.

        ``idf`` (per term of this index) defaults to ``stats.idf``: right when ``stats`` are
        this index's own, whose vocabulary is the same list in the same order.
        """
        p = self.params
        df = np.diff(self.indptr)
        # rank-bm25 floors only negative idf, at epsilon × the mean idf over the vocabulary.
        idf = stats.idf(p.epsilon) if idf is None else idf
        avgdl = stats.avgdl
        weights = np.empty(len(self.postings), dtype=p.dtype)
        # In blocks of whole terms: the float64 temporaries of one expression over every
        # posting would need ~6 arrays of 8 bytes per posting (several GB at 1M documents).
        bounds = np.searchsorted(self.indptr, np.arange(0, len(self.postings), _WEIGHT_BLOCK))
        starts = np.unique(np.append(bounds, len(df)))
        for t0, t1 in zip(starts[:-1], starts[1:], strict=True):
            lo, hi = int(self.indptr[t0]), int(self.indptr[t1])
            tf = self.tf[lo:hi].astype(np.float64)
            dl = self.doc_len[self.postings[lo:hi]].astype(np.float64)
            norm = p.k1 * (1 - p.b + p.b * dl / avgdl) if avgdl > 0 else np.full_like(tf, p.k1)
            term_idf = np.repeat(idf[t0:t1], df[t0:t1])
            weights[lo:hi] = term_idf * (tf * (p.k1 + 1) / (tf + norm))
        return weights

    def _dense_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense weight rows of the terms in at least DENSE_DF_FRACTION of the documents."""
        df = np.diff(self.indptr)
        terms = np.flatnonzero((df >= DENSE_DF_FRACTION * self.n_docs) & (df > 0))
        rows = np.full(len(df), -1, np.int64)
        rows[terms] = np.arange(len(terms))
        dense = np.zeros((len(terms), self.n_docs), dtype=self.weights.dtype)
        for r, t in enumerate(terms):
            lo, hi = int(self.indptr[t]), int(self.indptr[t + 1])
            dense[r, self.postings[lo:hi]] = self.weights[lo:hi]
        return rows, dense

    # -- scoring ------------------------------------------------------------------------------

    @property
    def n_docs(self) -> int:
        return int(len(self.doc_len))

    @property
    def n_postings(self) -> int:
        return int(len(self.postings))

    def warm_up(self) -> None:
        """Compile (or load from numba's on-disk cache) the top-k kernel now.

        The first compile takes seconds; builds call this so that the user's first
        search does not pay it.
        """
        if self.vocab:
            self.top_k(self.vocab[:1], 1)

    def query_terms(
        self,
        tokens: Sequence[str],
        weight: TermWeight | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distinct in-vocabulary term ids of a query and how often each occurs.

        ``weight`` (e.g. an analyzer's ``term_weight``) makes an occurrence count
        ``weight(token)`` instead of 1: how an n-gram stream is weighted against words.
        """
        terms, counts = self._term_counts(tokens, weight)
        return (np.fromiter(terms, np.int64, len(terms)), np.fromiter(counts, np.float64, len(counts)))

    def _term_counts(
        self,
        tokens: Sequence[str],
        weight: TermWeight | None,
    ) -> tuple[list[int], list[float]]:
        # Per-query Python work is most of a query's time on small corpora: lookups and
        # counting run in C (map, Counter), in first-occurrence order as before.
        ids = list(map(self.term_ids.get, tokens, repeat(-1)))
        counts = Counter(ids)
        counts.pop(-1, None)
        if weight is None:
            return list(counts), [float(n) for n in counts.values()]
        token_of = dict(zip(ids, tokens, strict=True))
        return list(counts), [n * weight(token_of[t]) for t, n in counts.items()]

    def _batch_terms(
        self,
        queries: Sequence[Sequence[str]],
        weight: TermWeight | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`query_terms` of many queries as ``(indptr, terms, counts)`` arrays.

        Lookups run in C (``map``) over all tokens at once and the counting in the
        kernel: per-query Python work was ~1/6 of a batch's time on JSQuAD.
        """
        flat = list(chain.from_iterable(queries))
        lengths = np.fromiter(map(len, queries), np.int64, len(queries))
        ids = np.fromiter(map(self.term_ids.get, flat, repeat(-1)), np.int64, len(flat))
        token_weights = (
            np.fromiter(map(weight, flat), np.float64, len(flat)) if weight is not None else np.zeros(0)
        )
        return kernels.query_term_counts(lengths, ids, token_weights, weight is not None, len(self.vocab))

    def get_scores(self, tokens: Sequence[str], weight: TermWeight | None = None) -> np.ndarray:
        """The BM25 score of every document for an analysed query (rank-bm25's ``get_scores``).

        Plain numpy: the reference the compiled top-k path is tested against.
        """
        scores = np.zeros(self.n_docs)
        for t, count in zip(*self.query_terms(tokens, weight), strict=True):
            lo, hi = self.indptr[t], self.indptr[t + 1]
            np.add.at(scores, self.postings[lo:hi], self.weights[lo:hi] * count)
        return scores

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Per-thread scratch space: concurrent searches (server threads) must not share it.
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = (
                np.zeros(self.n_docs, np.float64),
                np.zeros(self.n_docs, np.bool_),
                np.empty(self.n_docs, np.int64),
            )
            self._local.bufs = bufs
        return bufs

    def _allowed(self, allowed: np.ndarray | None) -> tuple[np.ndarray, bool]:
        if allowed is None:
            return _NO_MASK, False
        allowed = np.asarray(allowed, dtype=np.bool_)
        if allowed.shape != (self.n_docs,):
            raise ConfigError(f"allowed mask must have shape ({self.n_docs},), got {allowed.shape}")
        return allowed, True

    def top_k(
        self,
        tokens: Sequence[str],
        k: int,
        allowed: np.ndarray | None = None,
        weight: TermWeight | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions and scores of the best ``k`` documents matching at least one query term.

        Documents sharing no term with the query are never returned, so fewer than
        ``k`` results come back when fewer documents match. Ties break by position.
        ``allowed`` (a boolean mask over documents) restricts the candidates;
        ``weight`` weighs query tokens (see :meth:`query_terms`).
        """
        k = check_int("k", k)
        terms, counts = self.query_terms(tokens, weight)
        if len(terms) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        mask, use_mask = self._allowed(allowed)
        k = min(int(k), self.n_docs)
        pos = np.empty(k, np.int64)
        scores = np.empty(k, np.float64)
        n = kernels.top_k_one(
            self.indptr,
            self.postings,
            self.weights,
            terms,
            counts,
            k,
            mask,
            use_mask,
            *self._buffers(),
            pos,
            scores,
            self._positive,
            self.dense_rows,
            self.dense_weights,
        )
        return pos[:n], scores[:n]

    def top_k_batch(
        self,
        queries: Sequence[Sequence[str]],
        k: int,
        allowed: np.ndarray | None = None,
        threads: int | None = None,
        weight: TermWeight | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`top_k` for many analysed queries at once, in parallel threads."""
        k = check_int("k", k)
        if not queries:
            return []
        q_indptr, q_terms, q_counts = self._batch_terms(queries, weight)
        mask, use_mask = self._allowed(allowed)
        n_chunks = max(1, min(len(queries), threads or numba.get_num_threads()))
        k = min(int(k), self.n_docs)
        # One thread: the plain loop (numba's parallel kernel costs ~1.7x per query even
        # with one chunk, measured on JSQuAD).
        kernel = kernels.top_k_batch if n_chunks > 1 else kernels.top_k_serial
        pos, scores, n = kernel(
            self.indptr,
            self.postings,
            self.weights,
            q_indptr,
            q_terms,
            q_counts,
            self.n_docs,
            k,
            mask,
            use_mask,
            n_chunks,
            self._positive,
            self.dense_rows,
            self.dense_weights,
        )
        return [
            (p, s) if m == k else (p[:m], s[:m])
            for p, s, m in zip(list(pos), list(scores), n.tolist(), strict=True)
        ]

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Write npy arrays + vocab.json (no pickle); returns the manifest entry."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "weights.npy", np.ascontiguousarray(self.weights))
        np.save(directory / "tf.npy", np.ascontiguousarray(self.tf))
        np.save(directory / "postings.npy", np.ascontiguousarray(self.postings))
        np.save(directory / "indptr.npy", np.ascontiguousarray(self.indptr))
        np.save(directory / "doc_len.npy", np.ascontiguousarray(self.doc_len))
        np.save(directory / "dense_rows.npy", np.ascontiguousarray(self.dense_rows))
        np.save(directory / "dense_weights.npy", np.ascontiguousarray(self.dense_weights))
        write_json(directory / "vocab.json", self.vocab, indent=None)
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "params": asdict(self.params),
            "docs": self.n_docs,
            "terms": len(self.vocab),
            "postings": self.n_postings,
            "dense_terms": int(len(self.dense_weights)),
            "avgdl": float(self.doc_len.mean()) if self.n_docs else 0.0,
        }

    @classmethod
    def load(cls, directory: str | os.PathLike[str], params: BM25Params, *, mmap: bool = True) -> BM25Index:
        """Open a saved index; with ``mmap`` the arrays are paged in on demand."""
        directory = Path(directory)
        missing = [f for f in _FILES if not (directory / f).exists()]
        if missing:
            raise IndexFormatError(f"BM25 index at {directory} is incomplete: missing {missing}")

        def arr(name: str) -> np.ndarray:
            # asarray drops the np.memmap subclass (same pages): its Python-level
            # indexing overhead otherwise dominates a query.
            return np.asarray(load_array(directory / name, mmap=mmap))

        with open(directory / "vocab.json", encoding="utf-8") as fh:
            vocab = json.load(fh)
        doc_len = arr("doc_len.npy")
        dense = (
            {"dense_rows": arr("dense_rows.npy"), "dense_weights": arr("dense_weights.npy")}
            if all((directory / f).exists() for f in _DENSE_FILES)
            else {}
        )
        if dense and (
            dense["dense_rows"].shape != (len(vocab),) or dense["dense_weights"].shape[1:] != doc_len.shape
        ):
            raise IndexFormatError(
                f"BM25 index at {directory}: dense rows do not match the "
                "vocabulary or the documents (rebuild the index)"
            )
        return cls(
            vocab=vocab,
            indptr=arr("indptr.npy"),
            postings=arr("postings.npy"),
            tf=arr("tf.npy"),
            weights=arr("weights.npy"),
            doc_len=doc_len,
            params=params,
            **dense,
        )

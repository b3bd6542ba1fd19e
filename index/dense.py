"""The FAISS vector index: exact Flat for small corpora, IVFPQ (+ exact re-scoring) above.

Vectors are L2-normalised, so inner product is cosine similarity. FAISS ids are
document positions (the same positions as the BM25 matrix and ``ids.npy``).

FAISS is imported inside the functions that use it, so that opening an index for a BM25
search (or ``tansaku add`` without an encoder) never loads it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import load_array
from .checks import check_int
from .dense_kernels import dot_rows
from .errors import ConfigError, IndexFormatError

# FAISS's k-means wants >= 39 training points per centroid; PQ codebooks with
# nbits=8 have 256 centroids each, so below 39 * 256 points IVFPQ trains badly.
MIN_POINTS_PER_CENTROID = 39
TRAIN_POINTS_PER_CENTROID = 64  # k-means sample per inverted list (see DenseIndex.build)

# A filtered search scores the allowed vectors exactly when there are at most this many (no
# recall lost however selective the filter); above it FAISS searches with an id selector.
# Measured by scripts/bench_filter_exact.py (200,000 x 384 vectors, k=100, median ms per
# single-query search, exact (dense_kernels.dot_rows) vs IVFPQ selector, 2 busy cores):
# 3,000 allowed 0.77 vs 10.9, 5,000 1.64 vs 9.33 (selector recall 0.999), 7,000 5.44 vs 3.14,
# 10,000 10.7 vs 2.00. The IVFPQ crossover lies between 5,000 and 7,000; Flat's is above
# 30,000 (28.6 vs 30.4 ms there), so one threshold at the lower one serves both.
EXACT_MAX_ALLOWED = 5_000


@dataclass(frozen=True)
class FaissParams:
    """How to index vectors. ``None`` values are derived from the data at build time.

    kind: ``auto`` (Flat below the size IVFPQ trains well, IVFPQ above), ``flat`` or ``ivfpq``.
    nlist: inverted lists (default ≈ 4·√n, at least 39 training points each).
    m: PQ sub-quantizers (must divide the dimension; default dim/4, i.e. 4 dims each).
    nbits: bits per sub-quantizer code.
    nprobe: lists visited per query (a search-time default, overridable per query).
    rescore: IVFPQ returns ``rescore × k`` candidates, re-scored exactly against the
      float vectors kept on disk (memory-mapped); 0 turns re-scoring off.
    """

    kind: str = "auto"
    nlist: int | None = None
    m: int | None = None
    nbits: int = 8
    nprobe: int = 16
    rescore: int = 4
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "ivfpq"):
            raise ConfigError(f"FAISS kind must be auto, flat or ivfpq, got {self.kind!r}")
        if self.nprobe < 1 or self.rescore < 0 or not 1 <= self.nbits <= 16:
            raise ConfigError("need nprobe >= 1, rescore >= 0 and 1 <= nbits <= 16")


def default_m(dim: int) -> int:
    """The largest divisor of ``dim`` that is at most dim/4 (4+ dims per sub-quantizer)."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def plan(n: int, dim: int, params: FaissParams) -> tuple[FaissParams, str]:
    """Resolve ``auto``/``None`` parameters for ``n`` vectors; returns the plan and why."""
    pq_points = MIN_POINTS_PER_CENTROID * (1 << params.nbits)
    if params.kind == "flat" or (params.kind == "auto" and n < pq_points):
        why = (
            "requested"
            if params.kind == "flat"
            else f"{n:,} vectors < {pq_points:,} needed to train {params.nbits}-bit PQ codebooks "
            f"({MIN_POINTS_PER_CENTROID} x {1 << params.nbits}); exact search is fast at this size"
        )
        return replace(params, kind="flat", nlist=None, m=None), why
    nlist = params.nlist or max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))
    m = params.m or default_m(dim)
    if dim % m:
        raise ConfigError(f"PQ m={m} must divide the vector dimension {dim}")
    if n < nlist:
        raise ConfigError(f"IVFPQ with nlist={nlist} needs at least {nlist} vectors, got {n}")
    why = ("requested" if params.kind == "ivfpq" else f"{n:,} vectors: enough to train IVFPQ") + (
        f"; nlist={nlist} (~4*sqrt(n)), m={m} ({dim // m} dims each), nbits={params.nbits}"
    )
    return replace(params, kind="ivfpq", nlist=nlist, m=m), why


def sample_rows(n_total: int, n_train: int, seed: int) -> np.ndarray:
    """The sorted rows of ``n_total`` that train the quantizers: all, or a seeded sample.

    The same draw :meth:`DenseIndex.build` makes, so a sharded build can pick these rows
    from its shards and train bit for bit as an unsharded build of the same vectors would.
    """
    if n_train >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, n_train, replace=False))


def train_points(n_total: int, resolved: FaissParams) -> int:
    """How many of ``n_total`` vectors train the quantizers of a resolved plan (0 for Flat)."""
    if resolved.kind == "flat":
        return 0
    assert resolved.nlist is not None
    # k-means time grows with its sample; past a few dozen points per centroid the
    # centroids barely move (FAISS itself caps at 256 and warns below 39). 64 per centroid
    # keeps a 1M-vector build's k-means to a 256k sample; the PQ needs 39 x 256 points.
    return min(
        n_total,
        max(TRAIN_POINTS_PER_CENTROID * resolved.nlist, MIN_POINTS_PER_CENTROID * (1 << resolved.nbits)),
    )


def _trained_index(sample: np.ndarray, dim: int, resolved: FaissParams) -> Any:
    """An empty FAISS index for the resolved plan, its quantizers trained on ``sample``."""
    import faiss

    if resolved.kind == "flat":
        return faiss.IndexFlatIP(dim)
    assert resolved.nlist is not None and resolved.m is not None
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(
        quantizer, dim, resolved.nlist, resolved.m, resolved.nbits, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = resolved.seed
    index.pq.cp.seed = resolved.seed
    index.train(sample)
    return index


def train_empty(sample: np.ndarray, n_total: int, dim: int, params: FaissParams) -> DenseIndex:
    """An empty index planned for ``n_total`` vectors, trained on ``sample``.

    With ``sample`` the rows ``sample_rows(n_total, train_points(n_total, resolved), seed)``
    of the vectors, training equals :meth:`DenseIndex.build`'s bit for bit;
    :meth:`DenseIndex.with_vectors` then fills it (e.g. once per shard).
    """
    resolved, reason = plan(n_total, dim, params)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if resolved.kind != "flat" and (sample.ndim != 2 or sample.shape[1] != dim or not len(sample)):
        raise ConfigError(f"need a non-empty ({dim}-d) training sample, got shape {sample.shape}")
    return DenseIndex(_trained_index(sample, dim, resolved), resolved, reason=reason)


# -- search phases, shared by DenseIndex and the sharded index (dense_shards.py) -----------------

Result = tuple[np.ndarray, np.ndarray]  # (scores, positions), one row per query
# (queries, n, nprobe) -> FAISS's approximate top-n (positions -1 where missing)
Shortlister = Callable[[np.ndarray, int, int], Result]
# positions -> their float vectors, row for row
Fetcher = Callable[[np.ndarray], np.ndarray]


def empty_result(n_queries: int) -> Result:
    """No results for each of ``n_queries`` (k = 0)."""
    return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)


def id_selector(allowed: np.ndarray) -> tuple[Any, np.ndarray]:
    """A FAISS selector for the positions set in the boolean mask ``allowed``, and the bitmap
    it reads through a raw pointer: keep the bitmap alive until the searches are done."""
    import faiss

    bitmap = np.packbits(allowed, bitorder="little")  # FAISS reads bit (id & 7) of byte id >> 3
    return faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap)), bitmap


def rescore(queries: np.ndarray, shortlist: np.ndarray, k: int, fetch: Fetcher) -> Result:
    """Phase 2: the top ``k`` of each query's shortlisted positions by exact inner product.

    Ties go to the lower position; slots beyond the shortlist hold -inf and position -1.
    """
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    for row, cand in enumerate(shortlist):
        cand = cand[cand >= 0]
        # Sorted reads keep the memory-mapped vector file access sequential-ish.
        cand = np.sort(cand)
        exact = fetch(cand) @ queries[row]
        top = np.lexsort((cand, -exact))[:k]
        scores[row, : len(top)] = exact[top]
        positions[row, : len(top)] = cand[top]
    return scores, positions


def two_phase(
    queries: np.ndarray,
    k: int,
    nprobe: int,
    factor: int,
    ntotal: int,
    shortlist: Shortlister,
    fetch: Fetcher | None,
) -> Result:
    """IVFPQ search: a shortlist of ``factor × k`` by PQ score, re-scored exactly (phase 2);
    the PQ top-``k`` itself when ``factor`` is 0 or there are no float vectors."""
    if not factor or fetch is None:
        return shortlist(queries, k, nprobe)
    _, candidates = shortlist(queries, min(ntotal, k * factor), nprobe)
    return rescore(queries, candidates, k, fetch)


def probe_allowed(
    queries: np.ndarray,
    k: int,
    nprobe: int,
    nlist: int,
    ntotal: int,
    n_allowed: int,
    search: Callable[[np.ndarray, int], Result],
) -> Result:
    """An IVF search restricted by an id selector (``search(queries, nprobe)``), probing
    ``nprobe / selectivity`` lists, then all of them for queries that found fewer than ``k``."""
    wide = min(nlist, math.ceil(nprobe * ntotal / n_allowed))
    scores, positions = search(queries, wide)
    short = positions[:, k - 1] < 0
    if short.any() and wide < nlist:
        # The probed lists held fewer than k allowed documents: probe them all.
        scores[short], positions[short] = search(queries[short], nlist)
    return scores, positions


def top_exact(all_scores: np.ndarray, ids: np.ndarray, k: int) -> Result:
    """The top ``k`` of exact scores ``all_scores[q, i]`` of the documents at sorted ``ids``,
    ties to the lower position."""
    scores = np.empty((len(all_scores), k), dtype=np.float32)
    positions = np.empty((len(all_scores), k), dtype=np.int64)
    for row, row_scores in enumerate(all_scores):
        top = np.argpartition(-row_scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
        order = top[np.lexsort((ids[top], -row_scores[top]))]
        scores[row] = row_scores[order]
        positions[row] = ids[order]
    return scores, positions


class DenseIndex:
    """A FAISS index over document vectors, plus (IVFPQ) the raw vectors for re-scoring."""

    def __init__(
        self, index: Any, params: FaissParams, *, reason: str = "", vectors: np.ndarray | None = None
    ) -> None:
        self.index = index
        self.params = params
        self.reason = reason
        self.vectors = vectors
        if params.kind == "ivfpq":
            import faiss

            faiss.extract_index_ivf(index).nprobe = params.nprobe

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        """IVF lists (0 for Flat)."""
        import faiss

        return 0 if self.params.kind == "flat" else int(faiss.extract_index_ivf(self.index).nlist)

    @classmethod
    def build(cls, vectors: np.ndarray, params: FaissParams = FaissParams()) -> DenseIndex:
        """Train (IVFPQ) and add ``vectors`` (row i = document position i)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ConfigError(f"need a non-empty 2-d array of vectors, got shape {vectors.shape}")
        n, dim = vectors.shape
        resolved, reason = plan(n, dim, params)
        n_train = train_points(n, resolved)
        sample = vectors if n_train == n else vectors[sample_rows(n, n_train, resolved.seed)]
        index = _trained_index(sample, dim, resolved)
        index.add(vectors)
        if resolved.kind == "flat":
            return cls(index, resolved, reason=reason)
        # The float vectors are kept (on disk, memory-mapped) for exact re-scoring and so
        # updates can re-add them without re-encoding.
        return cls(index, resolved, reason=reason, vectors=vectors)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        rescore: int | None = None,
        allowed: np.ndarray | None = None,
        exact_max: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, positions) per query row; missing slots have position -1.

        ``allowed`` (a boolean mask over positions) restricts the results to those documents
        before the top-k, and ``k`` shrinks to their number (no -1 padding then). Up to
        ``exact_max`` (default :data:`EXACT_MAX_ALLOWED`) allowed documents are scored exactly
        against their stored vectors, so a selective filter loses no recall; above that FAISS
        searches with an id selector (IVF probing ``nprobe / selectivity`` lists, so about as
        many allowed candidates are scanned as an unfiltered search scans documents).
        """
        k = check_int("k", k)
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if allowed is not None:
            return self._search_allowed(queries, k, allowed, nprobe, rescore, exact_max)
        k = min(k, self.ntotal)
        if self.params.kind == "flat":
            return self.shortlist(queries, k, self.params.nprobe)
        return self._ivf_search(queries, k, nprobe or self.params.nprobe, rescore)

    def shortlist(
        self, queries: np.ndarray, n: int, nprobe: int, sel: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's own top-``n`` (scores, positions): approximate (PQ) scores for IVFPQ.

        ``nprobe`` is the number of IVF lists to visit (Flat ignores it); ``sel`` an optional
        FAISS id selector (see :func:`id_selector`). Missing slots have position -1.
        """
        import faiss

        if self.params.kind == "flat":
            if sel is None:
                return self.index.search(queries, n)  # type: ignore[no-any-return]
            params: Any = faiss.SearchParameters()
        else:
            # Per-call parameters: concurrent searches never share a mutable nprobe.
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
        if sel is not None:
            params.sel = sel
        return self.index.search(queries, n, params=params)  # type: ignore[no-any-return]

    def _ivf_search(
        self, queries: np.ndarray, k: int, nprobe: int, rescore: int | None, sel: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        factor = self.params.rescore if rescore is None else rescore
        return two_phase(
            queries,
            k,
            nprobe,
            factor,
            self.ntotal,
            lambda q, n, p: self.shortlist(q, n, p, sel),
            None if self.vectors is None else self._rows,
        )

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        assert self.vectors is not None
        return self.vectors[positions]  # type: ignore[no-any-return]

    def _search_allowed(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray,
        nprobe: int | None,
        rescore: int | None,
        exact_max: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        allowed = np.asarray(allowed, dtype=np.bool_)
        if allowed.shape != (self.ntotal,):
            raise ConfigError(f"allowed mask must have shape ({self.ntotal},), got {allowed.shape}")
        ids = np.flatnonzero(allowed)
        k = min(k, len(ids))
        if k == 0:
            return empty_result(len(queries))
        limit = EXACT_MAX_ALLOWED if exact_max is None else exact_max
        if len(ids) <= limit and (self.params.kind == "flat" or self.vectors is not None):
            return self._search_exact(queries, k, ids)
        sel, bitmap = id_selector(allowed)
        if self.params.kind == "flat":
            return self.shortlist(queries, k, self.params.nprobe, sel)
        found = probe_allowed(
            queries,
            k,
            nprobe or self.params.nprobe,
            self.nlist,
            self.ntotal,
            len(ids),
            lambda q, p: self._ivf_search(q, k, p, rescore, sel),
        )
        del bitmap  # FAISS read it through a raw pointer: it had to outlive the searches
        return found

    def _search_exact(self, queries: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the queries with the vectors at ``ids`` (sorted positions)."""
        return top_exact(dot_rows(self.all_vectors(), ids.astype(np.int64), queries), ids, k)

    @property
    def has_vectors(self) -> bool:
        """Whether exact scores are at hand (Flat always; IVFPQ when it kept vectors.npy)."""
        return self.params.kind == "flat" or self.vectors is not None

    def shortlist_allowed(
        self, queries: np.ndarray, n: int, nprobe: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`shortlist` restricted to the positions ``allowed`` marks (None: all)."""
        if allowed is None:
            return self.shortlist(queries, n, nprobe)
        sel, bitmap = id_selector(allowed)
        found = self.shortlist(queries, n, nprobe, sel)
        del bitmap  # FAISS read it through a raw pointer: it had to outlive the search
        return found

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The exact vectors at ``positions``, row for row."""
        return self.all_vectors()[np.asarray(positions, dtype=np.int64)]

    def exact_scores(self, positions: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Inner products of ``queries`` with the vectors at ``positions`` (queries × positions)."""
        return dot_rows(self.all_vectors(), np.asarray(positions, dtype=np.int64), queries)

    def all_vectors(self) -> np.ndarray:
        """Every indexed vector, exactly (Flat stores them; IVFPQ keeps vectors.npy).

        A read-only view, never a copy: valid while this index is alive.
        """
        import faiss

        if self.params.kind == "flat":
            stored = faiss.rev_swig_ptr(self.index.get_xb(), self.ntotal * self.dim)
            view = np.asarray(stored).reshape(self.ntotal, self.dim)
            view.flags.writeable = False
            return view
        if self.vectors is None:
            raise IndexFormatError("this IVFPQ index kept no float vectors; rebuild it")
        return np.asarray(self.vectors)

    def with_vectors(self, vectors: np.ndarray) -> DenseIndex:
        """A new index over ``vectors`` with this one's trained quantizers (no retraining)."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.params.kind == "flat":
            index: Any = faiss.IndexFlatIP(self.dim)
        else:
            index = faiss.clone_index(self.index)
            index.reset()  # drops the vectors, keeps the coarse quantizer and PQ codebooks
        if len(vectors):
            index.add(vectors)
        return DenseIndex(
            index, self.params, reason=self.reason, vectors=None if self.params.kind == "flat" else vectors
        )

    def describe(self) -> dict[str, Any]:
        import faiss

        return {
            "faiss": asdict(self.params),
            "reason": self.reason,
            "dim": self.dim,
            "vectors": self.ntotal,
            "faiss_version": faiss.__version__,
        }

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "faiss.index"))
        if self.vectors is not None:
            np.save(directory / "vectors.npy", self.vectors)
        return self.describe()

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], params: FaissParams, *, reason: str = "", mmap: bool = True
    ) -> DenseIndex:
        directory = Path(directory)
        import faiss

        path = directory / "faiss.index"
        if not path.exists():
            raise IndexFormatError(f"dense index at {directory} is incomplete: missing faiss.index")
        index = faiss.read_index(str(path))
        vectors = None
        if (directory / "vectors.npy").exists():
            vectors = load_array(directory / "vectors.npy", mmap=mmap)
        return cls(index, params, reason=reason, vectors=vectors)

"""The FAISS vector index: exact Flat for small corpora, IVFPQ (+ exact re-scoring) above.

Vectors are L2-normalised, so inner product is cosine similarity. FAISS ids are
document positions (the same positions as the BM25 matrix and ``ids.npy``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .errors import ConfigError, IndexFormatError

# FAISS's k-means wants >= 39 training points per centroid; PQ codebooks with
# nbits=8 have 256 centroids each, so below 39 * 256 points IVFPQ trains badly.
MIN_POINTS_PER_CENTROID = 39


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
        why = ("requested" if params.kind == "flat" else
               f"{n:,} vectors < {pq_points:,} needed to train {params.nbits}-bit PQ codebooks "
               f"({MIN_POINTS_PER_CENTROID} x {1 << params.nbits}); exact search is fast at this size")
        return replace(params, kind="flat", nlist=None, m=None), why
    nlist = params.nlist or max(1, min(int(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))
    m = params.m or default_m(dim)
    if dim % m:
        raise ConfigError(f"PQ m={m} must divide the vector dimension {dim}")
    if n < nlist:
        raise ConfigError(f"IVFPQ with nlist={nlist} needs at least {nlist} vectors, got {n}")
    why = ("requested" if params.kind == "ivfpq" else f"{n:,} vectors: enough to train IVFPQ") + (
        f"; nlist={nlist} (~4*sqrt(n)), m={m} ({dim // m} dims each), nbits={params.nbits}")
    return replace(params, kind="ivfpq", nlist=nlist, m=m), why


class DenseIndex:
    """A FAISS index over document vectors, plus (IVFPQ) the raw vectors for re-scoring."""

    def __init__(self, index: Any, params: FaissParams, *, reason: str = "",
                 vectors: np.ndarray | None = None) -> None:
        self.index = index
        self.params = params
        self.reason = reason
        self.vectors = vectors
        if params.kind == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = params.nprobe

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, params: FaissParams = FaissParams()) -> DenseIndex:
        """Train (IVFPQ) and add ``vectors`` (row i = document position i)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ConfigError(f"need a non-empty 2-d array of vectors, got shape {vectors.shape}")
        n, dim = vectors.shape
        resolved, reason = plan(n, dim, params)
        if resolved.kind == "flat":
            index = faiss.IndexFlatIP(dim)
            index.add(vectors)
            return cls(index, resolved, reason=reason)
        assert resolved.nlist is not None and resolved.m is not None
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, resolved.nlist, resolved.m, resolved.nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = resolved.seed
        index.pq.cp.seed = resolved.seed
        # k-means gains nothing past ~256 points per centroid: cap the sample, seeded.
        n_train = min(n, max(256 * resolved.nlist, MIN_POINTS_PER_CENTROID * (1 << resolved.nbits)))
        rng = np.random.default_rng(resolved.seed)
        sample = vectors if n_train == n else vectors[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(sample)
        index.add(vectors)
        # The float vectors are kept (on disk, memory-mapped) for exact re-scoring and so
        # updates can re-add them without re-encoding.
        return cls(index, resolved, reason=reason, vectors=vectors)

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               rescore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, positions) per query row; missing slots have position -1."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, self.ntotal)
        if self.params.kind == "flat":
            return self.index.search(queries, k)  # type: ignore[no-any-return]
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = nprobe or self.params.nprobe
        factor = self.params.rescore if rescore is None else rescore
        if not factor or self.vectors is None:
            return self.index.search(queries, k)  # type: ignore[no-any-return]
        shortlist_k = min(self.ntotal, k * factor)
        _, shortlist = self.index.search(queries, shortlist_k)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        for row, cand in enumerate(shortlist):
            cand = cand[cand >= 0]
            # Sorted reads keep the memory-mapped vector file access sequential-ish.
            cand = np.sort(cand)
            exact = self.vectors[cand] @ queries[row]
            top = np.lexsort((cand, -exact))[:k]
            scores[row, :len(top)] = exact[top]
            positions[row, :len(top)] = cand[top]
        return scores, positions

    def all_vectors(self) -> np.ndarray:
        """Every indexed vector, exactly (Flat stores them; IVFPQ keeps vectors.npy)."""
        if self.params.kind == "flat":
            return self.index.reconstruct_n(0, self.ntotal)  # type: ignore[no-any-return]
        if self.vectors is None:
            raise IndexFormatError("this IVFPQ index kept no float vectors; rebuild it")
        return np.asarray(self.vectors)

    def with_vectors(self, vectors: np.ndarray) -> DenseIndex:
        """A new index over ``vectors`` with this one's trained quantizers (no retraining)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.params.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        else:
            index = faiss.clone_index(self.index)
            index.reset()  # drops the vectors, keeps the coarse quantizer and PQ codebooks
        if len(vectors):
            index.add(vectors)
        return DenseIndex(index, self.params, reason=self.reason,
                          vectors=None if self.params.kind == "flat" else vectors)

    def describe(self) -> dict[str, Any]:
        return {"faiss": asdict(self.params), "reason": self.reason, "dim": self.dim,
                "vectors": self.ntotal, "faiss_version": faiss.__version__}

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "faiss.index"))
        if self.vectors is not None:
            np.save(directory / "vectors.npy", self.vectors)
        return self.describe()

    @classmethod
    def load(cls, directory: str | os.PathLike[str], params: FaissParams, *, reason: str = "",
             mmap: bool = True) -> DenseIndex:
        directory = Path(directory)
        path = directory / "faiss.index"
        if not path.exists():
            raise IndexFormatError(f"dense index at {directory} is incomplete: missing faiss.index")
        index = faiss.read_index(str(path))
        vectors = None
        if (directory / "vectors.npy").exists():
            vectors = np.load(directory / "vectors.npy", mmap_mode="r" if mmap else None,
                              allow_pickle=False)
        return cls(index, params, reason=reason, vectors=vectors)

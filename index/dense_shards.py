"""A dense index split into shards that searches exactly like the unsharded one.

Shard i holds the documents at global positions ``offsets[i] .. offsets[i+1]-1`` (its local
position p is global ``offsets[i] + p``). All shards share one trained coarse quantizer and
PQ codebooks (:meth:`ShardedDense.train`, then ``trained.with_vectors(part)`` per shard), so
a document's PQ score is the same in its shard as in an unsharded index, and the search
decisions (top-k, shortlist size, widened nprobe, exact-scoring threshold) use global
counts. Results equal :class:`~tansaku.index.dense.DenseIndex`'s over the concatenated
vectors: the same positions, order and scores, bit for bit.

IVFPQ is searched in two phases: every shard's PQ shortlist, merged into one global
shortlist of ``rescore × k``, then that shortlist re-scored exactly with the same code as
the unsharded index. Re-scoring inside each shard would keep a different candidate set.

Two limits, both from FAISS internals, where equality can fail:

* Exactly equal scores (duplicate vectors) cut by the top-k or shortlist boundary: which
  of them FAISS keeps depends on its heap's history, the merge keeps the higher positions.
  Whole groups of ties inside the top-k come in FAISS's order (position descending).
* Flat indexes of 10,000+ vectors searched with fewer queries than FAISS has threads:
  FAISS (1.15) then scores a large index with a database-parallel BLAS kernel, shards
  below that size with its per-vector kernel, and the two can round the last bit
  differently. ``plan`` picks Flat only below 9,984 vectors, so this needs ``kind="flat"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from .checks import check_int
from .dense import (
    EXACT_MAX_ALLOWED,
    DenseIndex,
    FaissParams,
    Fetcher,
    Result,
    empty_result,
    probe_allowed,
    sample_rows,
    top_exact,
    train_empty,
    train_points,
    two_phase,
)
from .errors import ConfigError

__all__ = ["FAISS_MISSING", "DenseShard", "ShardedDense", "merge_faiss", "sample_rows", "train_points"]

# FAISS fills the slots it found nothing for with this inner product (and position -1).
FAISS_MISSING = np.float32(np.finfo(np.float32).min)


class DenseShard(Protocol):
    """What :class:`ShardedDense` asks of one shard: a :class:`DenseIndex` in this process, or
    a proxy for one that lives elsewhere (a Ray Serve shard replica)."""

    @property
    def dim(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    @property
    def nlist(self) -> int: ...

    @property
    def params(self) -> FaissParams: ...

    @property
    def has_vectors(self) -> bool: ...

    def shortlist_allowed(
        self, queries: np.ndarray, n: int, nprobe: int, allowed: np.ndarray | None
    ) -> Result:
        """FAISS's top-``n`` (scores, local positions), only among ``allowed`` (None: all)."""
        ...

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Exact vectors at local ``positions``."""
        ...

    def exact_scores(self, positions: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Exact inner products, queries × local ``positions``."""
        ...


@dataclass(frozen=True)
class _ShardMask:
    """One shard's slice of an ``allowed`` mask and how many positions it allows."""

    allowed: np.ndarray
    count: int


def merge_faiss(parts: Sequence[Result], n: int) -> Result:
    """The best ``n`` of several FAISS results per query row (positions global, -1 missing).

    In FAISS's own order: score descending, equal scores by position descending (how its
    heaps return ties), so a merge of shards' results reads like one search over them all.
    """
    if not parts:
        raise ValueError("nothing to merge")
    n_queries = len(parts[0][0])
    scores = np.concatenate([s for s, _ in parts], axis=1)
    positions = np.concatenate([p for _, p in parts], axis=1)
    order = np.lexsort((-positions, -scores, positions < 0), axis=-1)[:, :n]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_positions = np.take_along_axis(positions, order, axis=1)
    missing = top_positions < 0
    out_scores = np.full((n_queries, n), FAISS_MISSING, dtype=np.float32)
    out_positions = np.full((n_queries, n), -1, dtype=np.int64)
    width = order.shape[1]
    out_scores[:, :width] = np.where(missing, FAISS_MISSING, top_scores)
    out_positions[:, :width] = np.where(missing, -1, top_positions)
    return out_scores, out_positions


class ShardedDense:
    """:class:`DenseIndex`'s search over several shards trained together (see module doc)."""

    def __init__(self, shards: Sequence[DenseShard], params: FaissParams, reason: str = "") -> None:
        if not shards:
            raise ConfigError("a sharded dense index needs at least one shard")
        self._shards = tuple(shards)
        self._params = params
        self._reason = reason
        first = self._shards[0]
        for shard in self._shards:
            if shard.dim != first.dim or shard.params.kind != params.kind:
                raise ConfigError(
                    f"shards must all be {params.kind} indexes of dimension {first.dim}, "
                    f"got {shard.params.kind} of dimension {shard.dim}"
                )
        local = [s for s in self._shards if isinstance(s, DenseIndex)]
        if params.kind == "ivfpq" and len(local) == len(self._shards):
            # (remote shards are opened, and checked, where they live)
            _check_shared_quantizers(local)
        sizes = [shard.ntotal for shard in self._shards]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._offsets.flags.writeable = False
        # Phase 2 and exact filtered scoring need every shard's float vectors.
        self._has_vectors = all(s.has_vectors for s in self._shards)

    @classmethod
    def train(cls, sample: np.ndarray, n_total: int, dim: int, params: FaissParams) -> DenseIndex:
        """An empty index planned for ``n_total`` vectors, trained on ``sample``; fill each
        shard with ``trained.with_vectors(part)``.

        ``sample`` should be the rows ``sample_rows(n_total, train_points(n_total, resolved),
        resolved.seed)`` of the concatenated vectors (``resolved`` from ``dense.plan``),
        gathered from the shards: then training equals :meth:`DenseIndex.build`'s bit for bit.
        """
        return train_empty(sample, n_total, dim, params)

    @property
    def dim(self) -> int:
        return self._shards[0].dim

    @property
    def ntotal(self) -> int:
        return int(self._offsets[-1])

    @property
    def params(self) -> FaissParams:
        return self._params

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def shards(self) -> tuple[DenseShard, ...]:
        return self._shards

    @property
    def offsets(self) -> tuple[int, ...]:
        """Global position of each shard's first document, then the total."""
        return tuple(int(o) for o in self._offsets)

    def describe(self) -> dict[str, Any]:
        import faiss  # imported where used: see tansaku.index.dense

        return {
            "faiss": asdict(self._params),
            "reason": self._reason,
            "dim": self.dim,
            "vectors": self.ntotal,
            "shards": [shard.ntotal for shard in self._shards],
            "faiss_version": faiss.__version__,
        }

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """The float vectors at global ``positions``, row for row (IVFPQ: from vectors.npy)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.ntotal):
            raise IndexError(f"positions must lie in [0, {self.ntotal})")
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        owner = np.searchsorted(self._offsets, positions, side="right") - 1
        for i in np.unique(owner):
            rows = owner == i
            out[rows] = self._shards[i].rows(positions[rows] - self._offsets[i])
        return out

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        rescore: int | None = None,
        allowed: np.ndarray | None = None,
        exact_max: int | None = None,
    ) -> Result:
        """Top-``k`` (scores, global positions) per query row: :meth:`DenseIndex.search`'s
        results over the concatenated shards, with the same arguments and semantics."""
        k = check_int("k", k)
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if allowed is not None:
            return self._search_allowed(queries, k, allowed, nprobe, rescore, exact_max)
        k = min(k, self.ntotal)
        if self._params.kind == "flat":
            return self._shortlist(queries, k, self._params.nprobe, None)
        return self._ivf_search(queries, k, nprobe or self._params.nprobe, rescore, None)

    def _shortlist(
        self, queries: np.ndarray, n: int, nprobe: int, masks: Sequence[_ShardMask | None] | None
    ) -> Result:
        """Phase 1: every shard's FAISS top-``n``, merged into the global top-``n``."""
        parts = []
        for i, shard in enumerate(self._shards):
            if masks is None:
                allowed, width = None, min(n, shard.ntotal)
            else:
                mask = masks[i]
                allowed, width = (None, 0) if mask is None else (mask.allowed, min(n, mask.count))
            if width == 0:
                continue  # nothing (allowed) in this shard
            scores, local = shard.shortlist_allowed(queries, width, nprobe, allowed)
            parts.append((scores, np.where(local >= 0, local + self._offsets[i], -1)))
        if not parts:
            return np.full((len(queries), n), FAISS_MISSING, np.float32), np.full(
                (len(queries), n), -1, np.int64
            )
        return merge_faiss(parts, n)

    def _fetcher(self) -> Fetcher | None:
        return self.vectors_at if self._has_vectors else None

    def _ivf_search(
        self,
        queries: np.ndarray,
        k: int,
        nprobe: int,
        rescore: int | None,
        masks: Sequence[_ShardMask | None] | None,
    ) -> Result:
        factor = self._params.rescore if rescore is None else rescore
        return two_phase(
            queries,
            k,
            nprobe,
            factor,
            self.ntotal,
            lambda q, n, p: self._shortlist(q, n, p, masks),
            self._fetcher(),
        )

    def _search_allowed(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray,
        nprobe: int | None,
        rescore: int | None,
        exact_max: int | None,
    ) -> Result:
        allowed = np.asarray(allowed, dtype=np.bool_)
        if allowed.shape != (self.ntotal,):
            raise ConfigError(f"allowed mask must have shape ({self.ntotal},), got {allowed.shape}")
        ids = np.flatnonzero(allowed)
        k = min(k, len(ids))
        if k == 0:
            return empty_result(len(queries))
        limit = EXACT_MAX_ALLOWED if exact_max is None else exact_max
        if len(ids) <= limit and self._has_vectors:
            return self._search_exact(queries, k, ids)
        masks = self._shard_masks(allowed)
        if self._params.kind == "flat":
            return self._shortlist(queries, k, self._params.nprobe, masks)
        return probe_allowed(
            queries,
            k,
            nprobe or self._params.nprobe,
            self._shards[0].nlist,
            self.ntotal,
            len(ids),
            lambda q, p: self._ivf_search(q, k, p, rescore, masks),
        )

    def _shard_masks(self, allowed: np.ndarray) -> list[_ShardMask | None]:
        masks: list[_ShardMask | None] = []
        for i in range(len(self._shards)):
            local = allowed[self._offsets[i] : self._offsets[i + 1]]
            count = int(local.sum())
            if count == 0:
                masks.append(None)
                continue
            masks.append(_ShardMask(local, count))
        return masks

    def _search_exact(self, queries: np.ndarray, k: int, ids: np.ndarray) -> Result:
        """Exact scores of the allowed documents, shard by shard with the unsharded index's
        kernel (so bit for bit the same), ranked together."""
        bounds = np.searchsorted(ids, self._offsets)
        parts = []
        for i, shard in enumerate(self._shards):
            local = ids[bounds[i] : bounds[i + 1]] - self._offsets[i]
            if len(local):
                parts.append(shard.exact_scores(local.astype(np.int64), queries))
        return top_exact(np.concatenate(parts, axis=1), ids, k)


def _check_shared_quantizers(shards: Sequence[DenseIndex]) -> None:
    """Shards of one IVFPQ index must share its coarse centroids and PQ codebooks, or a
    document's PQ score (phase 1) would depend on its shard."""
    import faiss

    def trained(shard: DenseIndex) -> tuple[np.ndarray, np.ndarray]:
        ivf = faiss.extract_index_ivf(shard.index)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        ivfpq: Any = faiss.downcast_index(shard.index)
        return centroids, faiss.vector_to_array(ivfpq.pq.centroids)

    first = trained(shards[0])
    for shard in shards[1:]:
        other = trained(shard)
        if not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, other, strict=True)):
            raise ConfigError("IVFPQ shards must share one trained quantizer (ShardedDense.train)")

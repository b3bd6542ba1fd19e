"""BM25 over the shards of one index, answering exactly as the unsharded index would.

Every shard's weights were computed with the whole corpus's statistics
(:class:`~tansaku.index.stats.CorpusStats`), so a document scores the same in its shard as
in one big index, bit for bit: the same weights are added in the same query-term order.
Each shard returns its own top ``k``; the merge keeps the best ``k`` by score, ties broken
by global position as the unsharded kernel breaks them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from .bm25 import BM25Index, BM25Params, TermWeight
from .checks import check_int
from .errors import ConfigError

# Below this many documents in all, one query scores its shards one after another.
PARALLEL_MIN_DOCS = 200_000


def merge_ranked(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], offsets: Sequence[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of the shards' ``(local positions, scores)``, as global positions.

    Higher scores first; equal scores by ascending global position.
    """
    positions = np.concatenate(
        [pos.astype(np.int64) + offset for (pos, _), offset in zip(parts, offsets, strict=True)]
    )
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in parts])
    order = np.lexsort((positions, -scores))[:k]
    return positions[order], scores[order]


class BM25Shard(Protocol):
    """What :class:`ShardedBM25` asks of one shard: a :class:`BM25Index` in this process, or a
    proxy for one that lives elsewhere (a Ray Serve shard replica)."""

    @property
    def n_docs(self) -> int: ...

    @property
    def n_postings(self) -> int: ...

    def warm_up(self) -> None: ...

    def top_k(
        self,
        tokens: Sequence[str],
        k: int,
        allowed: np.ndarray | None = None,
        weight: TermWeight | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def top_k_batch(
        self,
        queries: Sequence[Sequence[str]],
        k: int,
        allowed: np.ndarray | None = None,
        threads: int | None = None,
        weight: TermWeight | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]: ...


class ShardedBM25:
    """The :class:`BM25Index` search API over shards holding contiguous position ranges.

    ``parallel``: score the shards of one query side by side (default: only when the corpus
    is large enough for threads to pay; remote shards always gain from it).
    """

    def __init__(
        self, shards: Sequence[BM25Shard | BM25Index], params: BM25Params, *, parallel: bool | None = None
    ) -> None:
        if not shards:
            raise ConfigError("a sharded BM25 index needs at least one shard")
        self.shards: list[BM25Shard | BM25Index] = list(shards)
        self.params = params
        self.offsets = np.cumsum([0] + [s.n_docs for s in self.shards]).astype(np.int64)
        # Threads pay for themselves only when a shard's scan outweighs handing it over.
        workers = len(self.shards) if parallel else min(len(self.shards), os.cpu_count() or 1)
        if parallel is None:
            parallel = self.n_docs >= PARALLEL_MIN_DOCS
        use = parallel and workers > 1
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tansaku-bm25") if use else None

    @property
    def n_docs(self) -> int:
        return int(self.offsets[-1])

    def local_shard(self, number: int) -> BM25Index:
        """Shard ``number``'s postings, opened in this process (updates read them)."""
        shard = self.shards[number]
        if not isinstance(shard, BM25Index):
            raise ConfigError(f"shard {number} is not open in this process")
        return shard

    @property
    def n_postings(self) -> int:
        return sum(s.n_postings for s in self.shards)

    def warm_up(self) -> None:
        """Compile (or load) the kernels once, so the first search does not pay it."""
        self.shards[0].warm_up()

    def _slices(self, allowed: np.ndarray | None) -> list[np.ndarray | None]:
        if allowed is None:
            return [None] * len(self.shards)
        allowed = np.asarray(allowed, dtype=np.bool_)
        if allowed.shape != (self.n_docs,):
            raise ConfigError(f"allowed mask must have shape ({self.n_docs},), got {allowed.shape}")
        return [allowed[lo:hi] for lo, hi in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def top_k(
        self,
        tokens: Sequence[str],
        k: int,
        allowed: np.ndarray | None = None,
        weight: TermWeight | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`BM25Index.top_k` over every shard (global positions)."""
        k = check_int("k", k)

        def search(shard: BM25Shard | BM25Index, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            return shard.top_k(tokens, k, allowed=mask, weight=weight)

        masks = self._slices(allowed)
        if self._pool is None:
            parts = list(map(search, self.shards, masks))
        else:  # the kernel releases the GIL: large shards are scored side by side
            parts = list(self._pool.map(search, self.shards, masks))
        return merge_ranked(parts, self.offsets[:-1].tolist(), k)

    def top_k_batch(
        self,
        queries: Sequence[Sequence[str]],
        k: int,
        allowed: np.ndarray | None = None,
        threads: int | None = None,
        weight: TermWeight | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`BM25Index.top_k_batch` over every shard (each shard's batch in parallel)."""
        k = check_int("k", k)
        per_shard = [
            shard.top_k_batch(queries, k, allowed=mask, threads=threads, weight=weight)
            for shard, mask in zip(self.shards, self._slices(allowed), strict=True)
        ]
        starts = self.offsets[:-1].tolist()
        return [merge_ranked([results[q] for results in per_shard], starts, k) for q in range(len(queries))]

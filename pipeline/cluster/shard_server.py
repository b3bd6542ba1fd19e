"""One group of shards of a sharded index, served by a Ray Serve deployment.

A replica opens only its shards (corpus, id map, BM25 postings, FAISS part) and answers the
per-shard calls the ingress's :class:`~tansaku.index.ShardedIndex` makes: BM25 top-k, FAISS
shortlists, exact vector scores, filter masks and records. The merge across shards runs at
the ingress with the in-process code, so answers equal the in-process sharded index's.

Every call names the index *version* the ingress searches (see :func:`version_of`). A replica
keeps the versions it opened; one it has not opened yet it opens from disk, and if the disk
already holds another version the call fails with :class:`StaleVersionError` (the ingress
reopens and asks again). So one search never mixes two generations of the index, whichever
replicas answer it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tansaku.index.atomic import reading, recover
from tansaku.index.bm25 import BM25Index
from tansaku.index.errors import IndexFormatError, TansakuError
from tansaku.index.filters import Filter
from tansaku.index.lazy_dense import LazyDense
from tansaku.index.manifest import IndexManifest
from tansaku.index.records import Record
from tansaku.index.sharded import Shard, load_shard

# Versions a replica keeps open: the current one and the one searches may still be using.
KEEP_VERSIONS = 2


class StaleVersionError(TansakuError):
    """The index on disk moved on from the version a call asked for."""


def version_of(path: Path, manifest: IndexManifest) -> str:
    """A token naming one version of the index at ``path`` (read it under ``reading``).

    An update or rebuild swaps in a new directory (a new inode) and writes a new manifest; the
    generation alone would repeat after a rebuild.
    """
    manifest_stat = (path / "manifest.json").stat()
    return f"{path.stat().st_ino}:{manifest_stat.st_mtime_ns}:{manifest.generation}"


@dataclass
class OpenShard:
    """One shard opened by a replica."""

    shard: Shard
    bm25: BM25Index
    dense: LazyDense | None  # read on first use (a damaged FAISS file leaves BM25 working)


def group_of(number: int, per_group: int, groups: int) -> int:
    """The group serving shard ``number``: runs of ``per_group`` shards, dealt round the groups
    (a shard an update adds joins a group that already runs)."""
    return (number // per_group) % groups


class ShardGroup:
    """The Ray Serve deployment class serving group ``group`` of ``groups`` of the index at
    ``path`` (see :func:`group_of`)."""

    def __init__(self, path: str, group: int, groups: int, per_group: int) -> None:
        self.path = Path(path)
        self.group, self.groups, self.per_group = group, groups, per_group
        self.numbers: tuple[int, ...] = ()
        self._versions: OrderedDict[str, dict[int, OpenShard]] = OrderedDict()
        self._lock = threading.Lock()
        self._open_current()  # the first search should not pay for opening

    # -- versions ------------------------------------------------------------------------

    def _open_current(self) -> tuple[str, dict[int, OpenShard]]:
        recover(self.path)
        with reading(self.path):
            manifest = IndexManifest.load(self.path)
            if manifest.shards is None:
                raise IndexFormatError(f"index {self.path} is not sharded")
            version = version_of(self.path, manifest)
            with self._lock:
                if version in self._versions:
                    return version, self._versions[version]
            opened: dict[int, OpenShard] = {}
            for number, entry in enumerate(manifest.shards):
                if group_of(number, self.per_group, self.groups) == self.group:
                    opened[number] = OpenShard(*load_shard(self.path, manifest, entry))
        with self._lock:
            self._versions[version] = opened
            while len(self._versions) > KEEP_VERSIONS:
                _, old = self._versions.popitem(last=False)
                for part in old.values():
                    part.shard.corpus.close()
        return version, opened

    def _opened(self, version: str) -> dict[int, OpenShard]:
        with self._lock:
            opened = self._versions.get(version)
        if opened is None:
            current, opened = self._open_current()
            if current != version:
                raise StaleVersionError(f"index {self.path} changed (now version {current}); reopen it")
        return opened

    def _shard(self, version: str, number: int) -> OpenShard:
        try:
            return self._opened(version)[number]
        except KeyError:
            raise IndexFormatError(f"index {self.path}: this group does not serve shard {number}") from None

    # -- calls ---------------------------------------------------------------------------

    def describe(self, version: str) -> dict[int, dict[str, Any]]:
        """Per shard of this group: its document count, id map, postings count and dense shape."""
        out: dict[int, dict[str, Any]] = {}
        for number, part in self._opened(version).items():
            out[number] = {
                "count": len(part.shard.doc_ids),
                "doc_ids": np.asarray(part.shard.doc_ids),
                "postings": part.bm25.n_postings,
                "dense": None if part.dense is None else _dense_info(part.dense),
            }
        return out

    def bm25_top_k(
        self,
        version: str,
        number: int,
        queries: list[list[str]],
        k: int,
        allowed: np.ndarray | None,
        weights: dict[str, float] | None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """BM25 top-``k`` of each query in this shard (local positions, scores)."""
        bm25 = self._shard(version, number).bm25
        weight = None if weights is None else weights.__getitem__
        if len(queries) == 1:
            return [bm25.top_k(queries[0], k, allowed=allowed, weight=weight)]
        return bm25.top_k_batch(queries, k, allowed=allowed, weight=weight)

    def dense_shortlist(
        self, version: str, number: int, queries: np.ndarray, n: int, nprobe: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._dense(version, number).shortlist_allowed(queries, n, nprobe, allowed)

    def dense_rows(self, version: str, number: int, positions: np.ndarray) -> np.ndarray:
        return self._dense(version, number).rows(positions)

    def dense_exact(
        self, version: str, number: int, positions: np.ndarray, queries: np.ndarray
    ) -> np.ndarray:
        return self._dense(version, number).exact_scores(positions, queries)

    def mask(self, version: str, number: int, flt: Filter) -> np.ndarray:
        return np.asarray(self._shard(version, number).shard.masks.mask(flt))

    def has_field(self, version: str, number: int, field: str) -> bool:
        return self._shard(version, number).shard.masks.has_field(field)

    def field_names(self, version: str, number: int) -> tuple[str, ...]:
        return self._shard(version, number).shard.masks.field_names()

    def get_many(self, version: str, number: int, ids: list[str]) -> dict[str, Record]:
        return dict(self._shard(version, number).shard.corpus.get_many(ids))

    def _dense(self, version: str, number: int) -> Any:
        dense = self._shard(version, number).dense
        if dense is None:
            raise IndexFormatError(f"index {self.path} has no dense part")
        return dense.loaded()


def _dense_info(dense: LazyDense) -> dict[str, Any]:
    """A shard's FAISS shape, or why it cannot be read (BM25 searches go on without it)."""
    try:
        loaded = dense.loaded()
    except TansakuError as exc:
        return {"error": str(exc)}
    return {
        "dim": loaded.dim,
        "ntotal": loaded.ntotal,
        "nlist": loaded.nlist,
        "has_vectors": loaded.has_vectors,
    }

"""A sharded index whose shards live in Ray Serve deployments, searched from the ingress.

:class:`RayShardedIndex` is a :class:`~tansaku.index.ShardedIndex` whose per-shard parts
(BM25, FAISS, corpus, filter masks) are proxies calling :class:`~.shard_server.ShardGroup`
replicas. The analyzer, the query encoder, the corpus statistics and the merge across shards
stay at the ingress and run the in-process code: a query is analysed and encoded once, and
the answers equal the in-process sharded index's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tansaku.index import integrity
from tansaku.index.atomic import reading, recover
from tansaku.index.bm25 import BM25Params, TermWeight
from tansaku.index.bm25_shards import ShardedBM25
from tansaku.index.dense import FaissParams
from tansaku.index.dense_shards import ShardedDense
from tansaku.index.encoders import Encoder
from tansaku.index.errors import IndexFormatError, TansakuError
from tansaku.index.filters import Filter
from tansaku.index.lazy_dense import LazyDense
from tansaku.index.manifest import IndexManifest
from tansaku.index.records import Record
from tansaku.index.sharded import STATS_DIR, Shard, ShardedIndex
from tansaku.index.store import CORPUS_FILE

from .shard_server import StaleVersionError, group_of, version_of

T = TypeVar("T")
R = TypeVar("R")

# How often opening retries when an update swaps the index in between.
OPEN_ATTEMPTS = 5


@dataclass(frozen=True)
class ShardCall:
    """Where one shard lives: its group's handle, the version searched and its number."""

    handle: Any
    version: str
    number: int

    def __call__(self, method: str, *args: Any) -> Any:
        return _result(getattr(self.handle, method).remote(self.version, self.number, *args))


def _raiser(message: str) -> Callable[[], Any]:
    def fail() -> Any:
        raise IndexFormatError(message)

    return fail


def _result(response: Any) -> Any:
    """A deployment's answer; its own tansaku errors come back as themselves."""
    try:
        return response.result()
    except Exception as exc:  # Ray wraps what the replica raised (RayTaskError)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, TansakuError):
            raise cause from None
        raise


class RemoteBM25:
    """One shard's BM25 postings, scored in its replica (see :class:`BM25Shard`)."""

    def __init__(self, call: ShardCall, n_docs: int, n_postings: int) -> None:
        self._call = call
        self._n_docs = n_docs
        self._n_postings = n_postings

    @property
    def n_docs(self) -> int:
        return self._n_docs

    @property
    def n_postings(self) -> int:
        return self._n_postings

    def warm_up(self) -> None:
        """The replica compiled its kernels when it opened the shard."""

    def top_k(
        self,
        tokens: Sequence[str],
        k: int,
        allowed: np.ndarray | None = None,
        weight: TermWeight | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.top_k_batch([tokens], k, allowed=allowed, weight=weight)[0]  # type: ignore[no-any-return]

    def top_k_batch(
        self,
        queries: Sequence[Sequence[str]],
        k: int,
        allowed: np.ndarray | None = None,
        threads: int | None = None,
        weight: TermWeight | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        # The weight function stays here: its values travel, one per distinct token.
        weights = None if weight is None else {t: weight(t) for q in queries for t in q}
        return self._call("bm25_top_k", [list(q) for q in queries], k, allowed, weights)  # type: ignore[no-any-return]


class RemoteDense:
    """One shard's FAISS part, searched in its replica (see :class:`DenseShard`)."""

    def __init__(self, call: ShardCall, info: dict[str, Any], params: FaissParams) -> None:
        self._call = call
        self._info = info
        self._params = params

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

    @property
    def ntotal(self) -> int:
        return int(self._info["ntotal"])

    @property
    def nlist(self) -> int:
        return int(self._info["nlist"])

    @property
    def params(self) -> FaissParams:
        return self._params

    @property
    def has_vectors(self) -> bool:
        return bool(self._info["has_vectors"])

    def shortlist_allowed(
        self, queries: np.ndarray, n: int, nprobe: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._call("dense_shortlist", queries, n, nprobe, allowed)  # type: ignore[no-any-return]

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return self._call("dense_rows", positions)  # type: ignore[no-any-return]

    def exact_scores(self, positions: np.ndarray, queries: np.ndarray) -> np.ndarray:
        return self._call("dense_exact", positions, queries)  # type: ignore[no-any-return]


class RemoteCorpus:
    """One shard's records, read in its replica."""

    def __init__(self, call: ShardCall, count: int, path: Path) -> None:
        self._call = call
        self._count = count
        self.path = path  # the shard's corpus file, as every node sees it

    def __len__(self) -> int:
        return self._count

    def get_many(self, ids: Sequence[str]) -> dict[str, Record]:
        return self._call("get_many", list(ids))  # type: ignore[no-any-return]

    def iter_records(self) -> Iterator[Record]:
        raise TansakuError("reading a whole served shard is not supported: open the index directory instead")

    def close(self) -> None:
        """The replica owns the corpus."""


class RemoteMasks:
    """One shard's filter masks, computed (and cached) in its replica."""

    def __init__(self, call: ShardCall) -> None:
        self._call = call

    def mask(self, flt: Filter) -> np.ndarray:
        return self._call("mask", flt)  # type: ignore[no-any-return]

    def has_field(self, field: str) -> bool:
        return bool(self._call("has_field", field))

    def field_names(self) -> tuple[str, ...]:
        return tuple(self._call("field_names"))


@dataclass(frozen=True)
class ShardGroups:
    """The shard deployments: ``handles[g]`` serves the shards :func:`group_of` gives ``g``."""

    handles: tuple[Any, ...]
    per_group: int

    def owner(self, number: int) -> Any:
        return self.handles[group_of(number, self.per_group, len(self.handles))]


class RayShardedIndex(ShardedIndex):
    """A sharded index searched through Ray Serve shard deployments (read-only)."""

    groups: ShardGroups

    @classmethod
    def connect(
        cls, path: str | Path, groups: ShardGroups, *, encoder: Encoder | None = None
    ) -> RayShardedIndex:
        """The version of the index at ``path`` on disk now, its shards served by ``groups``."""
        path = Path(path)
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return cls._connect(path, groups, encoder)
            except StaleVersionError:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))  # an update is swapping the index in
        raise AssertionError("unreachable")

    @classmethod
    def _connect(cls, path: Path, groups: ShardGroups, encoder: Encoder | None) -> RayShardedIndex:
        recover(path)
        with reading(path):
            manifest = IndexManifest.load(path)
            if manifest.shards is None or manifest.stats is None:
                raise IndexFormatError(
                    f"index {path} is not sharded: Ray serves sharded indexes (build with --shards N)"
                )
            version = version_of(path, manifest)
            integrity.check_recorded(path, manifest.files)
            analyzer = integrity.load_analyzer(path, manifest)
            stats = integrity.load_stats(path, path / STATS_DIR, dict(manifest.stats))
        described: dict[int, dict[str, Any]] = {}
        for response in [h.describe.remote(version) for h in groups.handles]:
            described.update(_result(response))
        missing = [n for n in range(len(manifest.shards)) if n not in described]
        if missing:
            raise IndexFormatError(f"index {path}: no deployment serves shard(s) {missing}")
        shards, bm25, dense = [], [], []
        faiss = None if manifest.dense is None else FaissParams(**manifest.dense.faiss)
        for number, entry in enumerate(manifest.shards):
            info = described[number]
            if info["count"] != entry.count:
                raise IndexFormatError(f"index {path}: shard {entry.dir!r} disagrees with the manifest")
            call = ShardCall(groups.owner(number), version, number)
            corpus = RemoteCorpus(call, info["count"], path / entry.dir / CORPUS_FILE)
            shards.append(Shard(corpus, info["doc_ids"], RemoteMasks(call)))
            bm25.append(RemoteBM25(call, info["count"], info["postings"]))
            if faiss is not None and "error" not in info["dense"]:
                dense.append(RemoteDense(call, info["dense"], faiss))
        sharded_dense: ShardedDense | LazyDense | None = None
        if faiss is not None and manifest.dense is not None:
            broken = [info["dense"]["error"] for info in described.values() if "error" in info["dense"]]
            if broken:
                # known by its parameters, an error on first use: BM25 searches go on working
                sharded_dense = LazyDense(_raiser(broken[0]), faiss, manifest.dense.reason or "", [])
            else:
                sharded_dense = ShardedDense(dense, faiss, reason=manifest.dense.reason or "")
        params = BM25Params(**manifest.bm25.params)
        index = cls(
            path,
            manifest,
            shards,
            analyzer,
            ShardedBM25(bm25, params, parallel=True),
            sharded_dense,
            stats,
            encoder,
        )
        index.groups = groups
        index.version = version
        # one thread per shard: the calls only wait on the replicas
        index.pool = ThreadPoolExecutor(len(shards), thread_name_prefix="tansaku-ray-shards")
        return index

    version: str
    pool: ThreadPoolExecutor

    def __repr__(self) -> str:
        return f"RayShardedIndex({str(self.path)!r}, docs={len(self)}, shards={len(self.shards)})"

    def each_shard(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        # every shard asked at once (filter masks, a search's records): one round trip's
        # latency, not one per shard
        return list(self.pool.map(fn, items))

    def reopen(self) -> RayShardedIndex:
        """The version now on disk, served by the same deployments (the query encoder kept)."""
        fresh = RayShardedIndex.connect(self.path, self.groups)
        self.hand_over_encoder(fresh)
        return fresh

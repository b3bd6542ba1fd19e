"""An opened sharded index: the same search surface as :class:`~tansaku.index.Index`.

A sharded index directory holds ``manifest.json`` (its shards, the corpus-wide BM25
statistics' sizes, the analyzer, encoder and FAISS parameters, a generation number),
``stats/`` (document frequencies and vocabulary of the whole corpus) and one directory per
shard (``shards/000`` ...), each with its slice of the corpus, its id map, its BM25 postings
weighed with the global statistics and its FAISS codes and float vectors. Shard ``i`` holds
the contiguous global positions ``start .. start + count - 1``; every retriever works on it
unchanged and gets exactly the unsharded index's answers.

:func:`open_index` opens either kind.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from . import integrity
from .analyzer import Analyzer
from .arrays import load_array
from .atomic import reading, recover
from .bm25 import BM25Index, BM25Params
from .bm25_shards import ShardedBM25
from .corpus import Corpus, reading_corpus
from .dense import DenseIndex, FaissParams
from .dense_shards import ShardedDense
from .encoders import Encoder
from .errors import IndexFormatError
from .filter_fields import MaskSource
from .filters import FilterMasks, FilterSpec, parse_filter
from .lazy_dense import DenseFiles, LazyDense, open_dense
from .manifest import IndexManifest, ShardEntry
from .records import Record
from .stats import CorpusStats
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE, Fields, Index, IndexBase, corpus_fields

T = TypeVar("T")
R = TypeVar("R")

STATS_DIR = "stats"
SHARDS_DIR = "shards"
_ROUTES = 1 << 17  # ids whose shard a ShardedIndex remembers for hydration (a few MB)


def shard_dir(number: int) -> str:
    """The directory of shard ``number``, relative to the index."""
    return f"{SHARDS_DIR}/{number:03d}"


class ShardedCorpus:
    """The shards' corpora read as one (lookups by id ask each shard)."""

    def __init__(self, corpora: Sequence[ShardCorpus]) -> None:
        self.corpora = list(corpora)

    def __len__(self) -> int:
        return sum(len(c) for c in self.corpora)

    def get_many(self, ids: Sequence[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        wanted = list(ids)
        for corpus in self.corpora:
            if not wanted:
                break
            found.update(corpus.get_many(wanted))
            wanted = [i for i in wanted if i not in found]
        return found

    def iter_records(self) -> Iterator[Record]:
        for corpus in self.corpora:
            yield from corpus.iter_records()

    def close(self) -> None:
        for corpus in self.corpora:
            corpus.close()


class ShardCorpus(Protocol):
    """What a sharded index reads from one shard's corpus (a :class:`Corpus` or a proxy)."""

    path: Path

    def __len__(self) -> int: ...

    def get_many(self, ids: Sequence[str]) -> Mapping[str, Record]: ...

    def iter_records(self) -> Iterator[Record]: ...

    def close(self) -> None: ...


@dataclass
class Shard:
    """One opened shard: its corpus, id map and filter masks (BM25 and FAISS live above)."""

    corpus: ShardCorpus
    doc_ids: np.ndarray
    masks: MaskSource


class ShardedIndex(IndexBase):
    """Everything a retriever needs from a sharded index directory (read-only)."""

    def __init__(
        self,
        path: Path,
        manifest: IndexManifest,
        shards: Sequence[Shard],
        analyzer: Analyzer,
        bm25: ShardedBM25,
        dense: ShardedDense | LazyDense | None,
        stats: CorpusStats,
        encoder: Encoder | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.shards = list(shards)
        self.analyzer = analyzer
        self.bm25 = bm25
        self.dense = dense
        self.stats = stats
        self.corpus = ShardedCorpus([s.corpus for s in self.shards])
        self.doc_ids = np.concatenate([s.doc_ids for s in self.shards])
        self._encoder = encoder
        self._unread = weakref.WeakSet()
        self._ends = np.cumsum([len(s.doc_ids) for s in self.shards])
        # id -> shard of the ids ids_at handed out lately: hydration asks just that shard
        self._shard_of: dict[str, int] = {}

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, mmap: bool = True, encoder: Encoder | None = None
    ) -> ShardedIndex:
        path = Path(path)
        recover(path)
        with reading(path):  # every shard of one generation, never two
            manifest = IndexManifest.load(path)
            if manifest.shards is None:
                raise IndexFormatError(f"index {path} is not sharded: open it with Index.open")
            return cls._load(path, manifest, mmap=mmap, encoder=encoder)

    @classmethod
    def _load(
        cls, path: Path, manifest: IndexManifest, *, mmap: bool, encoder: Encoder | None
    ) -> ShardedIndex:
        assert manifest.shards is not None and manifest.stats is not None
        params = BM25Params(**manifest.bm25.params)
        shards: list[Shard] = []
        bm25: list[BM25Index] = []
        try:
            # cheap checks first (sizes, headers, analyzer): see integrity.py
            integrity.check_recorded(path, manifest.files)
            analyzer = integrity.load_analyzer(path, manifest)
            stats = integrity.load_stats(path, path / STATS_DIR, dict(manifest.stats))
            expected_start = 0
            for entry in manifest.shards:
                if entry.start != expected_start:
                    raise IndexFormatError(f"index {path}: shard {entry.dir!r} is out of place")
                expected_start += entry.count
                shard, shard_bm25, _ = load_shard(path, manifest, entry, mmap=mmap, dense=False)
                shards.append(shard)
                bm25.append(shard_bm25)
            sharded_dense = None
            if manifest.dense is not None:
                directories = [path / entry.dir / DENSE_DIR for entry in manifest.shards]
                counts = [entry.count for entry in manifest.shards]
                sharded_dense = open_dense(path, directories, manifest, counts, mmap=mmap)
        except BaseException as exc:
            for shard in shards:
                shard.corpus.close()
            if isinstance(exc, (KeyError, TypeError, FileNotFoundError)):
                raise IndexFormatError(f"index {path} is incomplete or inconsistent: {exc}") from exc
            raise
        if expected_start != stats.n_docs:
            raise IndexFormatError(
                f"index {path}: the shards hold {expected_start} documents, the statistics {stats.n_docs}"
            )
        return cls(path, manifest, shards, analyzer, ShardedBM25(bm25, params), sharded_dense, stats, encoder)

    def __repr__(self) -> str:
        dense = self.dense.params.kind if self.dense else "none"
        return f"ShardedIndex({str(self.path)!r}, docs={len(self)}, shards={len(self.shards)}, dense={dense})"

    def ids_at(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        ids = super().ids_at(positions)
        shards = np.searchsorted(self._ends, np.asarray(positions, dtype=np.intp), side="right")
        if len(self._shard_of) > _ROUTES:
            self._shard_of.clear()  # bounded memory; an id forgotten is looked up in every shard
        self._shard_of.update(zip(ids, shards.tolist(), strict=True))
        return ids

    def _fields(self, ids: Sequence[str]) -> Fields:
        # Each shard is asked only for its own ids (a search's hits come from ids_at): one
        # query per shard holding hits instead of every id tried in shard after shard.
        by_shard: dict[int, list[str]] = {}
        shard_of = self._shard_of.get
        for doc_id in ids:
            by_shard.setdefault(shard_of(doc_id, -1), []).append(doc_id)
        found: Fields = {}
        owned = [(number, wanted) for number, wanted in by_shard.items() if number >= 0]
        for part in self.each_shard(lambda item: corpus_fields(self.shards[item[0]].corpus, item[1]), owned):
            found.update(part)
        rest = [i for i in ids if i not in found]  # unknown ids, and any not where expected
        for shard in self.shards:
            if not rest:
                break
            found.update(corpus_fields(shard.corpus, rest))
            rest = [i for i in rest if i not in found]
        return found

    def filter_mask(self, spec: FilterSpec) -> np.ndarray | None:
        """The documents a metadata filter allows, over global positions (None: no restriction)."""
        flt = parse_filter(spec)
        if flt is None or flt.matches_all:
            return None

        def shard_mask(shard: Shard) -> np.ndarray:
            with reading_corpus(shard.corpus.path):
                return shard.masks.mask(flt)

        mask = np.concatenate(self.each_shard(shard_mask, self.shards))
        mask.flags.writeable = False
        return mask

    def each_shard(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over per-shard ``items``, one after another here; an index whose shards live
        elsewhere overrides this to ask them all at once."""
        return [fn(item) for item in items]

    def filter_masks(self) -> Sequence[MaskSource]:
        return [shard.masks for shard in self.shards]

    def reopen(self) -> ShardedIndex | Index:
        """The index now at this path; a loaded query encoder is kept if it is the same."""
        fresh = open_index(self.path)
        self.hand_over_encoder(fresh)
        return fresh


def load_shard(
    path: Path, manifest: IndexManifest, entry: ShardEntry, *, mmap: bool = True, dense: bool = True
) -> tuple[Shard, BM25Index, LazyDense | None]:
    """Open one shard of the sharded index at ``path`` (read under :func:`reading`), with the
    cheap integrity checks: its corpus, id map and filter masks, its BM25 postings and (with
    ``dense``) its FAISS part, read on first use (None: BM25 only)."""
    root = path / entry.dir
    if root.resolve().parent.parent != path.resolve():
        raise IndexFormatError(f"index {path}: shard {entry.dir!r} is out of place")
    integrity.check_part(path, root / IDS_FILE, root / BM25_DIR, root / CORPUS_FILE, entry.count)
    try:
        bm25 = BM25Index.load(root / BM25_DIR, BM25Params(**manifest.bm25.params), mmap=mmap)
    except (ValueError, OSError, RecursionError, IndexError) as exc:
        raise integrity.unreadable(path, root / BM25_DIR, exc) from exc
    integrity.check_bm25(path, root / BM25_DIR, bm25, entry.count)
    doc_ids = load_array(root / IDS_FILE, mmap=mmap)
    corpus = Corpus(root / CORPUS_FILE, readonly=True)
    shard = Shard(corpus, doc_ids, FilterMasks(corpus.conn, doc_ids))
    if not dense or manifest.dense is None:
        return shard, bm25, None
    section = manifest.dense
    params = FaissParams(**section.faiss)
    files = DenseFiles(path, root / DENSE_DIR, manifest.files)

    def load() -> DenseIndex:
        return files.read(params, reason="", dim=section.dim, n=entry.count, mmap=mmap)

    return shard, bm25, LazyDense(load, params, section.reason or "", [files])


SearchIndex = Index | ShardedIndex
"""What a retriever searches: one index directory, or a sharded one."""


def open_index(
    path: str | os.PathLike[str], *, mmap: bool = True, encoder: Encoder | None = None
) -> Index | ShardedIndex:
    """Open the index at ``path``, sharded or not."""
    path = Path(path)
    recover(path)
    with reading(path):  # one version: the manifest read here is the one loaded
        manifest = IndexManifest.load(path)
        if manifest.shards is not None:
            return ShardedIndex._load(path, manifest, mmap=mmap, encoder=encoder)
        return Index._load(path, mmap=mmap, encoder=encoder)

"""An opened index directory: corpus, analyzer, BM25 matrix, FAISS index and id map."""

from __future__ import annotations

import json
import os
import sqlite3
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import integrity
from .analyzer import Analyzer
from .arrays import load_array
from .atomic import changing, reading, recover, write_lock
from .bm25 import BM25Index, BM25Params
from .checksums import rerecord, verify_recorded
from .corpus import Corpus, reading_corpus
from .dense import DenseIndex
from .encoders import Encoder, encoder_from_config
from .errors import ConfigError, IndexFormatError, damaged
from .filter_fields import MaskSource, unknown_field_warnings
from .filters import FilterMasks, FilterSpec, json_path, parse_filter
from .hit import DeferredFields, Hit, with_fields
from .lazy_dense import LazyDense, open_dense
from .manifest import IndexManifest
from .records import Record

CORPUS_FILE = "corpus.sqlite"
IDS_FILE = "ids.npy"
BM25_DIR = "bm25"
DENSE_DIR = "dense"


class RecordSource(Protocol):
    """Where hydration reads records: a corpus, or the shards' corpora together."""

    def get_many(self, ids: Sequence[str]) -> Mapping[str, Record]: ...

    def close(self) -> None: ...


Fields = dict[str, tuple[str, str, dict[str, Any]]]
"""``{doc_id: (title, text, metadata)}`` as a :class:`Record` holds them ("" for no title)."""


def corpus_fields(corpus: Any, ids: Sequence[str]) -> Fields:
    """The fields hydration copies into hits, by id, in one query: a :class:`Corpus`'s raw
    rows (no :class:`Record` per row); any other source (a proxy) through ``get_many``."""
    rows = getattr(corpus, "rows", None)
    if rows is None:
        return {i: (r.title, r.text, dict(r.metadata)) for i, r in corpus.get_many(ids).items()}
    return {
        doc_id: (title or "", text, {} if not meta or meta == "{}" else json.loads(meta))
        for doc_id, title, text, meta in rows(ids).values()
    }


class IndexBase:
    """What one index and a sharded one share: the query encoder, ids and hydration.

    Subclasses set ``path``, ``manifest``, ``corpus`` (``get_many``; a :class:`Corpus`'s
    ``rows`` when it has them), ``dense``, ``doc_ids``, ``_encoder`` and ``_unread`` (an
    empty WeakSet).
    """

    path: Path
    manifest: IndexManifest
    corpus: RecordSource
    dense: Any
    doc_ids: np.ndarray
    _encoder: Encoder | None
    _unread: weakref.WeakSet[DeferredFields]  # of hydrate_lazy's lists, until fetched or dropped

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def encoder(self) -> Encoder:
        """The query encoder of the dense index (loaded on first use)."""
        if self.dense is None or self.manifest.dense is None:
            raise ConfigError(f"index {self.path} has no dense index; rebuild with --encoder MODEL")
        if self._encoder is None:
            self._encoder = encoder_from_config(dict(self.manifest.dense.encoder), base=self.path)
        return self._encoder

    def hand_over_encoder(self, fresh: IndexBase) -> None:
        """Give ``fresh`` (a newer version of this index) the query encoder this one loaded,
        when it records the same one (a corpus encoder's record includes its training
        statistics, so a retrained one is loaded afresh)."""
        old, new = self.manifest.dense, fresh.manifest.dense
        if self._encoder is not None and old is not None and new is not None and old.encoder == new.encoder:
            fresh._encoder = self._encoder

    def filter_masks(self) -> Sequence[MaskSource]:
        """The filter masks of the index's corpora (one, or one per shard)."""
        raise NotImplementedError

    def filter_warnings(self, spec: FilterSpec) -> list[str]:
        """What may be wrong with a (valid) filter here: fields no document has, e.g. a typo
        such as ``yaer``, whose conditions would otherwise silently match nothing."""
        return unknown_field_warnings(parse_filter(spec), self.filter_masks())

    def ids_at(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """The ids of documents at ``positions`` (one numpy gather, not a lookup per hit)."""
        ids = np.asarray(self.doc_ids)[np.asarray(positions, dtype=np.intp)]
        return ids.tolist() if ids.dtype.kind == "U" else [str(i) for i in ids]

    def hydrate(self, hits: Sequence[Hit]) -> list[Hit]:
        """Hits with title, text and metadata filled in from the corpus (one query per corpus)."""
        fields = self._fields([h.doc_id for h in hits])
        return [
            hit if (row := fields.get(hit.doc_id)) is None else with_fields(hit, row[0], row[1], dict(row[2]))
            for hit in hits
        ]

    def hydrate_lazy(self, hits: Sequence[Hit], *, owned: bool = False) -> list[Hit]:
        """:meth:`hydrate`, deferred until a field is first read.

        The hits equal, print and serialise as :meth:`hydrate`'s; reading any one's title, text
        or metadata fetches those of the whole list, in the one query :meth:`hydrate` makes.
        Closing the index fetches what is still unread first, so the hits outlive it.

        ``owned=True`` says the caller holds the only references to ``hits`` (it has just had
        them from a retriever of its own): hits whose fields were never read then become
        lazy themselves instead of being copied (half the objects; a search's hits and the
        head of its candidates are then the same objects).
        """
        if set(map(type, hits)) != {Hit}:  # nothing to defer, or subclasses: no lazy copies
            return self.hydrate(hits)
        source = DeferredFields(self._fields)
        self._unread.add(source)
        return source.adopt(hits) if owned else source.hits(hits)

    def _fields(self, ids: Sequence[str]) -> Fields:
        return corpus_fields(self.corpus, ids)

    def close(self) -> None:
        """Close the corpus, after fetching the fields of lazily hydrated hits not yet read."""
        for source in list(self._unread):
            source.load()
        self.corpus.close()
        if isinstance(self.dense, LazyDense):
            self.dense.close()


class Index(IndexBase):
    """Everything a retriever needs from one index directory (read-only).

    Open with :meth:`Index.open`; build with :func:`tansaku.index.build_index`.
    Position ``i`` in the BM25 matrix and FAISS index is document ``doc_ids[i]``.
    """

    def __init__(
        self,
        path: Path,
        manifest: IndexManifest,
        corpus: Corpus,
        analyzer: Analyzer,
        bm25: BM25Index,
        dense: DenseIndex | LazyDense | None,
        doc_ids: np.ndarray,
        encoder: Encoder | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.corpus = corpus
        self.analyzer = analyzer
        self.bm25 = bm25
        self.dense = dense
        self.doc_ids = doc_ids
        self._encoder = encoder
        self._unread = weakref.WeakSet()
        self._masks = FilterMasks(corpus.conn, doc_ids)
        self._corpus_path = corpus.path

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, mmap: bool = True, encoder: Encoder | None = None
    ) -> Index:
        """Open the index at ``path``. ``encoder`` overrides the one recorded in the manifest."""
        path = Path(path)
        recover(path)
        with reading(path):
            return cls._load(path, mmap=mmap, encoder=encoder)

    @classmethod
    def _load(cls, path: Path, *, mmap: bool, encoder: Encoder | None) -> Index:
        manifest = IndexManifest.load(path)
        if manifest.shards is not None:
            raise IndexFormatError(
                f"index {path} is sharded ({len(manifest.shards)} shards): open it with tansaku.open() "
                "or tansaku.index.open_index()"
            )
        try:
            # cheap checks first (sizes, headers, analyzer): see integrity.py
            integrity.check_recorded(path, manifest.files)
            analyzer = integrity.load_analyzer(path, manifest)
            n_docs = integrity.check_part(
                path,
                path / IDS_FILE,
                path / BM25_DIR,
                path / CORPUS_FILE,
                (manifest.counts or {}).get("docs", manifest.bm25.docs),
            )
            try:
                bm25 = BM25Index.load(path / BM25_DIR, BM25Params(**manifest.bm25.params), mmap=mmap)
            except (ValueError, OSError, RecursionError, IndexError) as exc:
                raise integrity.unreadable(path, path / BM25_DIR, exc) from exc
            integrity.check_bm25(path, path / BM25_DIR, bm25, n_docs, manifest.bm25.terms)
            dense = None
            if manifest.dense is not None:
                dense = open_dense(path, [path / DENSE_DIR], manifest, [n_docs], mmap=mmap)
            doc_ids = load_array(path / IDS_FILE, mmap=mmap)
            corpus = Corpus(path / CORPUS_FILE, readonly=True)
        except (KeyError, TypeError, FileNotFoundError) as exc:
            raise IndexFormatError(f"index {path} is incomplete or inconsistent: {exc}") from exc
        if len(doc_ids) != bm25.n_docs:
            raise IndexFormatError(f"index {path} is inconsistent: id map and matrices disagree")
        return cls(path, manifest, corpus, analyzer, bm25, dense, doc_ids, encoder)

    def reopen(self) -> Index:
        """The index now at this path (after an update or rebuild swapped one in)."""
        fresh = Index.open(self.path)
        self.hand_over_encoder(fresh)
        return fresh

    def __repr__(self) -> str:
        dense = self.dense.params.kind if self.dense else "none"
        return f"Index({str(self.path)!r}, docs={len(self)}, dense={dense})"

    def filter_mask(self, spec: FilterSpec) -> np.ndarray | None:
        """The documents a metadata filter allows, as a read-only boolean mask over positions.

        None when ``spec`` is None or matches everything (no restriction). Masks are
        cached per filter (this object is one index version; updates open a new one).
        """
        flt = parse_filter(spec)
        if flt is None or flt.matches_all:
            return None
        with reading_corpus(self._corpus_path):
            return self._masks.mask(flt)

    def filter_masks(self) -> Sequence[MaskSource]:
        return [self._masks]


def create_field_index(index: str | os.PathLike[str] | Corpus | Index, field: str) -> str:
    """Create (if absent) an SQLite expression index on ``json_extract(metadata, '$."field"')``.

    ``index`` is an index directory, an opened :class:`~tansaku.index.Index` or a
    :class:`~tansaku.index.Corpus` opened for writing. Returns the SQLite index name
    (``tansaku_meta_<field>``). It lives in ``corpus.sqlite``: updates (``tansaku add`` /
    ``delete``) keep it, a rebuild drops it.

    When it helps: SQL that spells the path literally, e.g. your own queries over
    ``corpus.sqlite`` such as ``WHERE json_extract(metadata, '$."year"') = 2020``, becomes an
    index seek instead of a scan. tansaku's own filter masks do not use it: they bind the
    JSON path as a parameter (so no filter text ever becomes SQL), which SQLite's planner
    cannot match against an expression index (EXPLAIN QUERY PLAN: SCAN docs). They scan
    ``docs`` once per distinct filter and index version instead and cache the mask, which
    makes the index unnecessary for repeated filters.
    """
    path = json_path(field)  # validates the name: DDL cannot take parameters
    name = f"tansaku_meta_{field}"
    ddl = f"CREATE INDEX IF NOT EXISTS \"{name}\" ON docs (json_extract(metadata, '{path}'))"
    try:
        if isinstance(index, Corpus):
            index.conn.execute(ddl)
            return name
        directory = Path(index.path if isinstance(index, Index) else index)
        if not (directory / CORPUS_FILE).is_file():
            raise IndexFormatError(f"no index at {directory} (missing {CORPUS_FILE})")
        # never while an update copies the corpus; readers opening meanwhile wait for the
        # manifest to record the corpus's new size and checksum
        with write_lock(directory), changing(directory):
            problem = verify_recorded(directory, CORPUS_FILE)
            if problem is not None:  # never record a damaged corpus as good
                raise damaged(directory, CORPUS_FILE, problem)
            conn = sqlite3.connect(directory / CORPUS_FILE)
            try:
                conn.execute(ddl)
            finally:
                conn.close()
            rerecord(directory, [CORPUS_FILE])
    except sqlite3.OperationalError as exc:
        raise IndexFormatError(f"cannot create an index on field {field!r}: {exc}") from exc
    return name

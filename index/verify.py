"""``tansaku check``: verify every file of an index, and its structure, without changing it.

:func:`verify_index` reads every byte once:

* each file the manifest records exists, has its recorded size and its CRC-32
  (:mod:`tansaku.index.checksums`); a manifest written before checksums has none, and the
  report says its contents are unverified;
* the checks an open makes (:mod:`tansaku.index.integrity`), on every part of the index
  (each shard's), collecting every problem instead of stopping at the first;
* deeper invariants no open can afford: each term's postings rise strictly, term frequencies
  are at least 1, weights are finite, each document's length is the sum of its term
  frequencies, the id map lists the corpus's ids in its row order, SQLite's
  ``PRAGMA quick_check`` passes, and the FAISS index reads and holds one vector per document.

A file whose checksum fails is not read by FAISS (whose reader trusts its input); every
other check runs in numpy or SQLite, which fail cleanly on any bytes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import integrity
from .arrays import load_array
from .atomic import reading
from .bm25 import BM25Index, BM25Params
from .checksums import ALGORITHM, checksums
from .dense import FaissParams
from .errors import IndexCorruptError, IndexFormatError, damaged
from .lazy_dense import DenseFiles
from .manifest import IndexManifest
from .paths import INDEX_ENTRIES, MANIFEST
from .sharded import STATS_DIR
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE

_CHUNK = 1 << 24  # postings per step of the deep checks (bounded temporaries)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (``file`` relative to the index, as the manifest names it)."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    """What :func:`verify_index` found.

    ``checksums``: whether the manifest records checksums (False: an index written before
    them, whose contents could only be checked for structure); ``files``: how many files
    were verified against their checksums.
    """

    path: str
    problems: tuple[Problem, ...] = ()
    files: int = 0
    checksums: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "checksums": self.checksums,
            "files": self.files,
            "problems": [{"file": p.file, "message": p.message} for p in self.problems],
        }


@dataclass
class _Findings:
    index: Path
    problems: dict[str, str] = field(default_factory=dict)  # file -> its first problem

    def add(self, file: str, message: str) -> None:
        self.problems.setdefault(file, message)

    def run(self, check: Callable[[], Any], file: str = MANIFEST) -> Any:
        """``check()``'s result (True for None); None after recording the damage it found.

        ``file``: what an unforeseen error is blamed on (the checks name their file).
        """
        try:
            result = check()
        except IndexCorruptError as exc:
            self.add(exc.file or file, exc.what)
        except IndexFormatError as exc:
            self.add(file, str(exc))
        except (ValueError, OSError, RuntimeError, MemoryError, sqlite3.Error) as exc:
            self.add(file, f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
        else:
            return True if result is None else result
        return None

    def bad(self, rel: str) -> bool:
        return rel in self.problems


def verify_index(path: str | os.PathLike[str]) -> CheckReport:
    """Verify every file and the structure of the index at ``path`` (sharded or not).

    IndexFormatError when ``path`` is no index at all; damage, however bad, is reported in
    the :class:`CheckReport`, never raised. Holds the reader lock, so an update swapping in a
    new version waits until the check is done.
    """
    path = Path(path)
    if not path.is_dir():
        IndexManifest.load(path)  # raises: no index there
    with reading(path):
        return _verify(path)


def _verify(path: Path) -> CheckReport:
    found = _Findings(path)
    try:
        manifest = IndexManifest.load(path)
    except IndexCorruptError as exc:
        found.add(exc.file or MANIFEST, exc.what)
        return _report(path, found, 0, False)
    except IndexFormatError as exc:
        if not any(entry.name in INDEX_ENTRIES for entry in path.iterdir()):
            raise
        found.add(MANIFEST, str(exc))
        return _report(path, found, 0, False)
    verified = _verify_checksums(path, manifest.files or {}, found)
    found.run(lambda: integrity.load_analyzer(path, manifest))
    params = found.run(lambda: BM25Params(**manifest.bm25.params))
    if manifest.shards is None:
        n_docs = (manifest.counts or {}).get("docs", manifest.bm25.docs)
        _verify_part(found, manifest, path, n_docs, params, manifest.bm25.terms)
    else:
        if manifest.stats is not None:
            recorded = dict(manifest.stats)
            stats = found.run(lambda: integrity.load_stats(path, path / STATS_DIR, recorded), "stats")
            total = sum(entry.count for entry in manifest.shards)
            if stats is not None and stats.n_docs != total:
                found.add(MANIFEST, f"its shards hold {total:,} documents, its statistics {stats.n_docs:,}")
        for entry in manifest.shards:
            _verify_part(found, manifest, path / entry.dir, entry.count, params, None)
    return _report(path, found, verified, manifest.files is not None)


def _report(path: Path, found: _Findings, verified: int, has_checksums: bool) -> CheckReport:
    problems = tuple(Problem(file, message) for file, message in sorted(found.problems.items()))
    return CheckReport(str(path), problems, verified, has_checksums)


def _verify_checksums(index: Path, files: Mapping[str, Mapping[str, Any]], found: _Findings) -> int:
    """Sizes and checksums of every recorded file; how many were verified."""
    present = []
    for rel, entry in files.items():
        try:
            size = os.stat(index / rel).st_size
        except FileNotFoundError:
            found.add(rel, "is missing")
            continue
        if size != entry["size"]:
            what = f"is {size:,} bytes but was written as {entry['size']:,} (truncated or overwritten)"
            found.add(rel, what)
        elif ALGORITHM in entry:
            present.append(rel)
    for rel, crc in zip(present, checksums(index / rel for rel in present), strict=True):
        expected = files[rel][ALGORITHM]
        if crc != expected:
            found.add(rel, f"does not match its checksum ({ALGORITHM} {crc}, written as {expected}): damaged")
    return len(files)


def _verify_part(
    found: _Findings,
    manifest: IndexManifest,
    root: Path,
    n_docs: int | None,
    params: BM25Params | None,
    terms: int | None,
) -> None:
    """One part (the index, or a shard): the open-time checks, then the deep ones."""
    index = found.index
    bm = root / BM25_DIR
    rel_bm = integrity.relative(index, bm)
    n = found.run(
        lambda: integrity.check_part(index, root / IDS_FILE, bm, root / CORPUS_FILE, n_docs),
        integrity.relative(index, root / IDS_FILE),
    )
    if n is None:
        return
    if params is not None:
        bm25 = found.run(lambda: _load_bm25(index, bm, params), rel_bm)
        if bm25 is not None and found.run(lambda: integrity.check_bm25(index, bm, bm25, n, terms), rel_bm):
            found.run(lambda: _deep_bm25(index, bm, bm25, n), rel_bm)
    found.run(lambda: _deep_corpus(index, root, n), integrity.relative(index, root / CORPUS_FILE))
    if manifest.dense is not None:
        dense = root / DENSE_DIR
        found.run(lambda: _read_dense(found, manifest, dense, n), integrity.relative(index, dense))


def _load_bm25(index: Path, directory: Path, params: BM25Params) -> BM25Index:
    try:
        return BM25Index.load(directory, params, mmap=True)
    except (ValueError, OSError, RecursionError, IndexError) as exc:
        raise integrity.unreadable(index, directory, exc) from exc


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, _CHUNK):
        yield lo, min(n, lo + _CHUNK)


def _deep_bm25(index: Path, directory: Path, bm25: BM25Index, n_docs: int) -> None:
    """What only reading every posting shows (the cheap checks passed)."""
    rel = integrity.relative(index, directory)
    postings, tf, weights, indptr = bm25.postings, bm25.tf, bm25.weights, bm25.indptr
    # a term's first posting may be lower than the previous term's last: only within a
    # term must document ids rise
    first = np.zeros(len(postings), np.bool_)
    starts = np.asarray(indptr[:-1])
    first[starts[starts < len(postings)]] = True
    doc_len = np.zeros(n_docs, np.float64)
    for lo, hi in _chunks(len(postings)):
        block = np.asarray(postings[lo:hi], dtype=np.int64)
        # rising[i]: posting lo + i is above the one before it (the first posting has none)
        rising = np.diff(np.asarray(postings[max(lo - 1, 0) : hi], dtype=np.int64)) > 0
        if lo == 0:
            rising = np.concatenate([[True], rising])
        if not (rising | first[lo:hi]).all():
            raise damaged(index, f"{rel}/postings.npy", "lists a document twice or out of order in a term")
        counts = np.asarray(tf[lo:hi])
        if len(counts) and int(counts.min()) < 1:
            raise damaged(index, f"{rel}/tf.npy", "holds term frequencies below 1")
        if not np.isfinite(np.asarray(weights[lo:hi])).all():
            raise damaged(index, f"{rel}/weights.npy", "holds weights that are not finite numbers")
        doc_len += np.bincount(block, weights=counts, minlength=n_docs)
    if not np.array_equal(doc_len, np.asarray(bm25.doc_len, dtype=np.float64)):
        raise damaged(index, f"{rel}/doc_len.npy", "disagrees with the term frequencies (tf.npy)")
    if len(bm25.dense_weights) and not np.isfinite(np.asarray(bm25.dense_weights)).all():
        raise damaged(index, f"{rel}/dense_weights.npy", "holds weights that are not finite numbers")


def _deep_corpus(index: Path, root: Path, n_docs: int) -> None:
    """SQLite's own check of the corpus, and the id map against its rows."""
    corpus = root / CORPUS_FILE
    rel = integrity.relative(index, corpus)
    ids = load_array(root / IDS_FILE, mmap=True)
    try:
        conn = sqlite3.connect(f"file:{corpus}?mode=ro", uri=True)
        try:
            result = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if result != ["ok"]:
                raise damaged(index, rel, f"fails SQLite's check: {'; '.join(map(str, result[:3]))}")
            stored = [row[0] for row in conn.execute("SELECT id FROM docs ORDER BY rowid")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise damaged(index, rel, f"cannot be read ({exc})") from exc
    id_rel = integrity.relative(index, root / IDS_FILE)
    if len(stored) != n_docs:
        raise damaged(index, rel, f"holds {len(stored):,} documents where {n_docs:,} belong")
    if stored != ids.tolist():
        raise damaged(index, id_rel, "does not list the corpus's ids in its row order")


def _read_dense(found: _Findings, manifest: IndexManifest, directory: Path, n: int) -> None:
    """Read the FAISS index (unless its checksum failed: FAISS trusts what it reads)."""
    index = found.index
    section = manifest.dense
    assert section is not None
    if any(found.bad(integrity.relative(index, directory / name)) for name in ("faiss.index", "vectors.npy")):
        return
    files = DenseFiles(index, directory, manifest.files)
    try:
        dense = files.read(FaissParams(**section.faiss), reason="", dim=section.dim, n=n, mmap=True)
        if dense.vectors is not None and not np.isfinite(np.asarray(dense.vectors)).all():
            rel = integrity.relative(index, directory / "vectors.npy")
            raise damaged(index, rel, "holds values that are not finite")
    finally:
        files.close()

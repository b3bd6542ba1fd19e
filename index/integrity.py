"""Cheap checks when an index opens: what a damaged index would otherwise crash on or misanswer.

Without reading any file's data, opening an index checks that

* every file the manifest records (a manifest with ``files``) exists with its recorded size;
* every ``.npy`` header parses, with the dtype kind and shape the other files imply, and the
  file is exactly as long as the header says (so a truncated array is caught without
  recorded sizes too);
* ``corpus.sqlite`` starts with SQLite's header and is as long as that header says;
* the manifest's analyzer is one this version can rebuild;

and, after loading, in vectorised numpy over the arrays a query reads (one pass over the
postings: ~10 ms per 10 million, from the page cache):

* the BM25 postings offsets start at 0, never decrease and end at the number of postings;
* every posting names a document of the corpus, every dense row an existing row;
* the vocabulary has one entry per term, no term twice, and as many terms as recorded.

The compiled BM25 kernel indexes its arrays without bounds checks, so these are what keep a
damaged file from crashing the process. The dense part (``faiss.index``, ``vectors.npy``) is
checked when first used (:mod:`tansaku.index.lazy_dense`): a BM25 search never reads it.
Every byte is verified only by ``tansaku check`` (:mod:`tansaku.index.verify`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .analyzer import Analyzer, analyzer_from_config
from .arrays import NpyHeader, read_header
from .bm25 import BM25_FILES, BM25Index
from .errors import ConfigError, IndexCorruptError, IndexFormatError, damaged
from .manifest import IndexManifest
from .paths import MANIFEST
from .stats import CorpusStats

DENSE_PARTS = frozenset({"dense"})  # directories opened on first dense use (lazy_dense)
SQLITE_MAGIC = b"SQLite format 3\x00"

INTEGER = "iu"
FLOAT = "f"
TEXT = "U"


def relative(index: Path, path: Path) -> str:
    """``path`` as the manifest names it: relative to the index, with forward slashes."""
    try:
        return path.relative_to(index).as_posix()
    except ValueError:
        return str(path)


def is_dense_file(rel: str) -> bool:
    """Whether a recorded file belongs to a dense part (checked on first dense use)."""
    parts = rel.split("/")
    return len(parts) > 1 and parts[-2] in DENSE_PARTS


def check_recorded(index: Path, files: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Every file in ``files`` (the manifest's table) exists with its recorded size, but for
    the dense parts' (checked when first used, see :mod:`tansaku.index.lazy_dense`)."""
    for rel, entry in (files or {}).items():
        if not is_dense_file(rel):
            check_size(index, rel, int(entry["size"]))


def check_size(index: Path, rel: str, size: int) -> None:
    try:
        actual = os.stat(index / rel).st_size
    except FileNotFoundError:
        raise damaged(index, rel, "is missing") from None
    _same_size(index, rel, actual, size)


def check_opened_size(index: Path, rel: str, fh: BinaryIO, size: int) -> None:
    """:func:`check_size` of a file already open (whatever is at its path now)."""
    _same_size(index, rel, os.fstat(fh.fileno()).st_size, size)


def _same_size(index: Path, rel: str, actual: int, size: int) -> None:
    if actual != size:
        raise damaged(
            index, rel, f"is {actual:,} bytes but was written as {size:,} (truncated or overwritten)"
        )


def npy(
    index: Path,
    path: Path,
    kinds: str,
    shape: tuple[int | None, ...],
    *,
    dtype: str | None = None,
) -> NpyHeader:
    """The header of the array at ``path``, checked: dtype kind in ``kinds`` (or exactly
    ``dtype``), native byte order, C order, ``shape`` (None: any length on that axis), and
    the file exactly header + data long."""
    rel = relative(index, path)
    try:
        header, size = read_header(path)
    except FileNotFoundError:
        raise damaged(index, rel, "is missing") from None
    except HEADER_ERRORS as exc:
        raise damaged(index, rel, f"has no readable .npy header ({_one_line(exc)})") from None
    return check_header(index, rel, header, size, kinds, shape, dtype=dtype)


# What numpy's header parser raises on arbitrary bytes: ValueError, SyntaxError, EOFError,
# tokenize's TokenError... (it tokenises and literal_evals the header text); any of them
# means the header is unreadable.
HEADER_ERRORS = (Exception,)


def check_header(
    index: Path,
    rel: str,
    header: NpyHeader,
    size: int,
    kinds: str,
    shape: tuple[int | None, ...],
    *,
    dtype: str | None = None,
) -> NpyHeader:
    """:func:`npy`'s checks of a header already read (``size``: the file's)."""
    found = header.dtype
    if found.kind not in kinds or (dtype is not None and found != np.dtype(dtype)) or not found.isnative:
        want = dtype or {INTEGER: "integers", FLOAT: "floats", TEXT: "text"}.get(kinds, kinds)
        raise damaged(index, rel, f"holds {found.str} values where {want} belong (bad header)")
    if header.fortran_order or len(header.shape) != len(shape):
        raise damaged(index, rel, f"has shape {header.shape} (bad header)")
    for got, length in zip(header.shape, shape, strict=True):
        if length is not None and got != length:
            expected = tuple("*" if n is None else n for n in shape)
            raise damaged(index, rel, f"has shape {header.shape} where {expected} belongs")
    if size != header.offset + header.nbytes:
        raise damaged(
            index,
            rel,
            f"is {size:,} bytes where its header says {header.offset + header.nbytes:,} (truncated?)",
        )
    return header


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def check_part(index: Path, ids_file: Path, bm: Path, corpus_file: Path, n_docs: int | None) -> int:
    """The headers of one part's files (the index itself, or one shard); its document count.

    The part's id map, BM25 directory and corpus; ``n_docs``: what the manifest records
    (None: take it from ``ids.npy``).
    """
    ids = npy(index, ids_file, TEXT, (n_docs,))
    n = ids.shape[0]
    for name in BM25_FILES:
        if not (bm / name).is_file():
            raise damaged(index, relative(index, bm / name), "is missing")
    indptr = npy(index, bm / "indptr.npy", INTEGER, (None,))
    terms = max(indptr.shape[0] - 1, 0)
    postings = npy(index, bm / "postings.npy", INTEGER, (None,))
    n_postings = postings.shape[0]
    npy(index, bm / "tf.npy", INTEGER, (n_postings,))
    weights = npy(index, bm / "weights.npy", FLOAT, (n_postings,))
    npy(index, bm / "doc_len.npy", INTEGER, (n,))
    if (bm / "dense_rows.npy").exists() or (bm / "dense_weights.npy").exists():
        npy(index, bm / "dense_rows.npy", INTEGER, (terms,))
        npy(index, bm / "dense_weights.npy", FLOAT, (None, n), dtype=weights.dtype.name)
    check_sqlite(index, corpus_file)
    return n


def check_bm25(index: Path, directory: Path, bm25: BM25Index, n_docs: int, terms: int | None = None) -> None:
    """The structural invariants of a loaded BM25 part (see the module docstring)."""
    rel = relative(index, directory)
    vocab = bm25.vocab
    if not isinstance(vocab, list):
        raise damaged(index, f"{rel}/vocab.json", "is not a list of terms")
    n_terms = len(bm25.indptr) - 1
    if len(vocab) != n_terms:
        raise damaged(index, f"{rel}/vocab.json", f"lists {len(vocab):,} terms, indptr.npy {n_terms:,}")
    if len(bm25.term_ids) != len(vocab):
        raise damaged(index, f"{rel}/vocab.json", "lists a term twice")
    if terms is not None and len(vocab) != terms:
        raise damaged(index, f"{rel}/vocab.json", f"lists {len(vocab):,} terms, the manifest {terms:,}")
    indptr = bm25.indptr
    n_postings = len(bm25.postings)
    if n_terms >= 0 and (
        len(indptr) == 0
        or indptr[0] != 0
        or indptr[-1] != n_postings
        or bool((indptr[1:] < indptr[:-1]).any())
    ):
        raise damaged(index, f"{rel}/indptr.npy", f"does not rise from 0 to the {n_postings:,} postings")
    if n_postings and _unsigned_max(bm25.postings) >= n_docs:
        raise damaged(index, f"{rel}/postings.npy", f"names documents outside the {n_docs:,} of the corpus")
    rows = bm25.dense_rows
    if len(rows) and (int(rows.min()) < -1 or int(rows.max()) >= len(bm25.dense_weights)):
        raise damaged(index, f"{rel}/dense_rows.npy", "points at rows dense_weights.npy does not have")


def _unsigned_max(values: np.ndarray) -> int:
    """The largest value of an integer array read as unsigned: negative values count as huge,
    so one pass checks ``0 <= values < n``."""
    if values.dtype.kind == "i":
        values = values.view(values.dtype.str.replace("i", "u"))
    return int(values.max())


def check_sqlite(index: Path, path: Path) -> None:
    """``path`` starts with SQLite's header and is as long as its header says."""
    rel = relative(index, path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise damaged(index, rel, "is missing") from None
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        raise damaged(index, rel, "is not an SQLite database (bad header)")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise damaged(index, rel, f"has a bad SQLite header (page size {page})")
    if size % page:
        raise damaged(
            index, rel, f"is {size:,} bytes, not a whole number of {page:,}-byte pages (truncated?)"
        )
    pages = int.from_bytes(head[28:32], "big")
    # The page count in the header is valid when its "valid-for" number matches the change counter.
    if pages and head[24:28] == head[92:96] and pages * page != size:
        raise damaged(index, rel, f"is {size:,} bytes where its header says {pages * page:,} (truncated?)")


def load_analyzer(index: Path, manifest: IndexManifest) -> Analyzer:
    """The manifest's analyzer; IndexCorruptError naming the manifest when it cannot be rebuilt."""
    try:
        return analyzer_from_config(dict(manifest.analyzer))
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as exc:
        what = f"names an analyzer this tansaku cannot rebuild ({_one_line(exc)})"
        raise damaged(index, MANIFEST, what) from None


def unreadable(index: Path, directory: Path, exc: BaseException) -> IndexCorruptError:
    """The error for a part whose files passed the header checks but failed to load.

    A JSON or UTF-8 error is its ``vocab.json`` (the only JSON file a part loads); an
    IndexError, offsets past the postings (an index written before the dense rows computes
    them while loading, before :func:`check_bm25` can look).
    """
    import json

    if isinstance(exc, IndexCorruptError):
        return exc
    name = "vocab.json" if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)) else ""
    rel = relative(index, directory / name) if name else relative(index, directory)
    return damaged(index, rel, f"cannot be read ({_one_line(exc)})")


def load_stats(index: Path, directory: Path, entry: dict[str, Any]) -> CorpusStats:
    """A sharded index's corpus statistics, their files checked first."""
    terms = entry.get("terms")
    npy(index, directory / "df.npy", INTEGER, (terms if isinstance(terms, int) else None,))
    try:
        return CorpusStats.load(directory, entry)
    except IndexFormatError as exc:
        # df.npy passed its checks: what failed is the vocabulary (or the manifest's entry)
        raise damaged(index, relative(index, directory / "vocab.json"), f"cannot be used ({exc})") from None

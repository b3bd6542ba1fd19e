"""The dense part of an index, read on first use: a BM25 search never touches FAISS.

Opening an index opens its dense files (``faiss.index``, ``vectors.npy``) but reads nothing:
holding them open keeps this version's files even after an update swaps in the next one,
so a later read can never mix two versions. The first use (a dense search, the vectors an
update reuses...) checks them cheaply, then reads them:

* each file exists with the size the manifest records;
* the FAISS header names the kind of index the manifest records (Flat or IVFPQ), with its
  dimension and one vector per document; after reading, every IVF list's ids lie in range;
* ``vectors.npy`` holds float32 vectors of that shape.

A damaged file is then an :class:`~tansaku.index.errors.IndexCorruptError` naming it, and
searches that need no vectors go on working. (Before, FAISS was read at open: a damaged
file broke ``--mode bm25`` too.)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .arrays import read_header
from .dense import DenseIndex, FaissParams
from .dense_shards import ShardedDense
from .errors import damaged
from .integrity import FLOAT, HEADER_ERRORS, check_header, check_opened_size, relative
from .manifest import IndexManifest

FAISS_FILE = "faiss.index"
VECTORS_FILE = "vectors.npy"
# The four-byte code FAISS writes first, per index kind tansaku builds (IP; L2 accepted).
FOURCC = {"flat": (b"IxFI", b"IxF2"), "ivfpq": (b"IwPQ", b"IvPQ")}


class DenseFiles:
    """One part's dense files (the index's ``dense/``, or a shard's), opened but not read."""

    def __init__(self, index: Path, directory: Path, files: Mapping[str, Mapping[str, Any]] | None) -> None:
        self.index = index
        self.directory = directory
        self.files = files
        self.faiss: BinaryIO | None = None
        self.vectors: BinaryIO | None = None
        self.missing: str | None = None
        try:
            self.faiss = open(directory / FAISS_FILE, "rb")  # noqa: SIM115  (closed by close())
        except FileNotFoundError:
            self.missing = relative(index, directory / FAISS_FILE)
        try:
            self.vectors = open(directory / VECTORS_FILE, "rb")  # noqa: SIM115
        except FileNotFoundError:
            recorded = relative(index, directory / VECTORS_FILE)
            if files is not None and recorded in files:
                self.missing = self.missing or recorded

    def close(self) -> None:
        for fh in (self.faiss, self.vectors):
            if fh is not None:
                fh.close()

    def read(self, params: FaissParams, *, reason: str, dim: int | None, n: int, mmap: bool) -> DenseIndex:
        """The checked :class:`DenseIndex` of these files (``n`` vectors of ``dim``)."""
        import faiss  # here, not at the top: a BM25 search never loads FAISS

        index = self.index
        if self.missing is not None:
            raise damaged(index, self.missing, "is missing")
        assert self.faiss is not None
        # the sizes of the files opened (this version's, even if an update has since
        # swapped in the next one) against what this version's manifest recorded
        for name, fh in ((FAISS_FILE, self.faiss), (VECTORS_FILE, self.vectors)):
            entry = (self.files or {}).get(relative(index, self.directory / name))
            if fh is not None and entry is not None:
                check_opened_size(index, relative(index, self.directory / name), fh, int(entry["size"]))
        rel = relative(index, self.directory / FAISS_FILE)
        self.faiss.seek(0)
        head = self.faiss.read(16)
        if len(head) < 16 or head[:4] not in FOURCC.get(params.kind, ()):
            raise damaged(index, rel, f"is not a FAISS {params.kind} index (bad header)")
        d = int(np.frombuffer(head, np.int32, 1, 4)[0])
        ntotal = int(np.frombuffer(head, np.int64, 1, 8)[0])
        if (dim is not None and d != dim) or ntotal != n:
            raise damaged(index, rel, f"holds {ntotal:,} vectors of {d}, where {n:,} of {dim} belong")
        self.faiss.seek(0)
        try:
            reader = faiss.PyCallbackIOReader(self.faiss.read)  # type: ignore[attr-defined]
            loaded = faiss.read_index(reader)
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise damaged(index, rel, f"cannot be read ({_first_line(exc)})") from None
        if loaded.d != d or loaded.ntotal != n or not _ivf_ids_in_range(loaded, n):
            raise damaged(index, rel, "has inconsistent inverted lists")
        vectors = None if self.vectors is None else self._vectors(params, d, n, mmap)
        return DenseIndex(loaded, params, reason=reason, vectors=vectors)

    def _vectors(self, params: FaissParams, dim: int, n: int, mmap: bool) -> np.ndarray:
        assert self.vectors is not None
        rel = relative(self.index, self.directory / VECTORS_FILE)
        try:
            header, size = read_header(self.vectors)
        except HEADER_ERRORS as exc:
            raise damaged(self.index, rel, f"has no readable .npy header ({_first_line(exc)})") from None
        check_header(self.index, rel, header, size, FLOAT, (n, dim), dtype="float32")
        if mmap:
            return np.memmap(self.vectors, header.dtype, "r", header.offset, header.shape)
        self.vectors.seek(header.offset)
        return np.fromfile(self.vectors, header.dtype, n * dim).reshape(header.shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


def _ivf_ids_in_range(index: Any, n: int) -> bool:
    """Every id in an IVF index's lists lies in ``[0, n)`` and the lists hold ``n`` in all."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return True  # not an IVF index: Flat has no ids
    lists: Any = ivf.invlists
    total = 0
    for i in range(lists.nlist):
        size = lists.list_size(i)
        total += size
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(i), size)
            if int(ids.min()) < 0 or int(ids.max()) >= n:
                return False
    return total == n


def _close_all(parts: Sequence[DenseFiles]) -> None:
    for part in parts:
        part.close()


class LazyDense:
    """A dense index (:class:`DenseIndex` or a sharded one) read on first attribute access.

    ``params`` and ``reason`` (from the manifest) are there without reading anything; any
    other attribute reads the files (once; thread-safe) and is the loaded index's.
    """

    def __init__(
        self,
        load: Callable[[], Any],
        params: FaissParams,
        reason: str,
        parts: Sequence[DenseFiles],
    ) -> None:
        self.params = params
        self.reason = reason
        self._load = load
        self._lock = threading.Lock()
        self._loaded: Any = None
        # the files close when this object goes, whether it was ever read or not
        self._close = weakref.finalize(self, _close_all, list(parts))

    def loaded(self) -> Any:
        """The dense index, read now if it was not yet (IndexCorruptError when damaged)."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._load()
                    self._close()  # FAISS is in memory; the vectors are mapped
        return self._loaded

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never read files for private or special lookups
            raise AttributeError(name)
        return getattr(self.loaded(), name)

    def close(self) -> None:
        """Close the files if they were never read."""
        self._close()


def open_dense(
    index: Path, directories: Sequence[Path], manifest: IndexManifest, counts: Sequence[int], *, mmap: bool
) -> LazyDense:
    """The dense part of the index at ``index``, its files opened, read on first use.

    ``directories``: the dense directory of the index, or of each shard, holding ``counts``
    vectors. A sharded index's part reads as one :class:`ShardedDense`.
    """
    section = manifest.dense
    assert section is not None
    params = FaissParams(**section.faiss)
    reason = section.reason or ""
    parts = [DenseFiles(index, directory, manifest.files) for directory in directories]
    sharded = manifest.shards is not None

    def load() -> DenseIndex | ShardedDense:
        read = [
            part.read(params, reason="" if sharded else reason, dim=section.dim, n=n, mmap=mmap)
            for part, n in zip(parts, counts, strict=True)
        ]
        return ShardedDense(read, params, reason=reason) if sharded else read[0]

    return LazyDense(load, params, reason, parts)

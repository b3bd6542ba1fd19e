"""Loading the index's ``.npy`` arrays, safely from many threads at once.

numpy parses an ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's AST
constructor keeps its recursion-depth bookkeeping in shared state: readers opening an index
in several threads at once failed with ``SystemError: AST constructor recursion depth
mismatch`` (seen in tests/test_update.py's concurrent readers; CPython gh-106905). Loading
is a header parse plus an mmap, so one lock around it costs nothing measurable.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

_LOCK = threading.Lock()


def load_array(path: str | os.PathLike[str], *, mmap: bool) -> np.ndarray:
    """An array saved with ``np.save``: memory-mapped read-only, or read into memory.

    Never unpickles (``allow_pickle=False``): an object array is an error.
    """
    with _LOCK:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` file's header says: its dtype, shape and where the data starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(source: str | os.PathLike[str] | BinaryIO) -> tuple[NpyHeader, int]:
    """The header of an ``.npy`` file (a path, or a file opened in binary mode, read from its
    start) and the file's size, reading only the header.

    ValueError when it is not an ``.npy`` header this version writes (1.0 or 2.0).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return read_header(fh)
    source.seek(0)
    size = os.fstat(source.fileno()).st_size
    with _LOCK:  # numpy parses the header with ast.literal_eval (see above)
        version = np.lib.format.read_magic(source)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(source)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(source)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    return NpyHeader(dtype, tuple(int(n) for n in shape), source.tell(), bool(fortran)), size

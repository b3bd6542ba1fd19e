"""Loading the index's ``.npy`` arrays, safely from many threads at once.

numpy parses an ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's AST
constructor keeps its recursion-depth bookkeeping in shared state: readers opening an index
in several threads at once failed with ``SystemError: AST constructor recursion depth
mismatch`` (seen in tests/test_update.py's concurrent readers; CPython gh-106905). Loading
is a header parse plus an mmap, so one lock around it costs nothing measurable.
"""

from __future__ import annotations

import os
import threading

import numpy as np

_LOCK = threading.Lock()


def load_array(path: str | os.PathLike[str], *, mmap: bool) -> np.ndarray:
    """An array saved with ``np.save``: memory-mapped read-only, or read into memory.

    Never unpickles (``allow_pickle=False``): an object array is an error.
    """
    with _LOCK:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

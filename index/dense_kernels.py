"""Exact inner products of a few stored vectors with the queries (numba, one thread).

A filtered dense search scores small allowed sets exactly. BLAS would spread a single
query's few-megabyte product over threads whose start-up costs more than the work (and
stalls for milliseconds when the cores are busy); this loop reads each allowed row once,
in place (no gathered copy), at memory speed.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def dot_rows(vectors, ids, queries):  # type: ignore[no-untyped-def]
    """``out[q, i] = vectors[ids[i]] · queries[q]`` (float32)."""
    n_q, dim = queries.shape
    out = np.empty((n_q, len(ids)), np.float32)
    for i in range(len(ids)):
        row = vectors[ids[i]]
        for q in range(n_q):
            acc = np.float32(0.0)
            for d in range(dim):
                acc += row[d] * queries[q, d]
            out[q, i] = acc
    return out

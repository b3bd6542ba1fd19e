"""Tokenising a large corpus in worker processes, in input order, with bounded memory.

MeCab releases no GIL-free parallelism to threads, so big corpora are tokenised in
processes. Each worker builds its own analyzer (and with it its own fugashi Tagger,
which cannot be pickled) from the analyzer's manifest config in the pool initializer. Texts go out in
chunks with at most a few chunks per worker in flight, and results come back in
submission order, so the output is exactly the single-process output and a
million-document corpus is never held in memory at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from tqdm.auto import tqdm

from .analyzer import Analyzer, analyzer_from_config
from .checks import check_int
from .errors import ConfigError

# Below this many documents one process is faster than starting workers (~1-2 s each:
# a spawned worker imports numpy, fugashi and loads the dictionary).
PARALLEL_MIN_DOCS = 5_000
MAX_DEFAULT_WORKERS = 4
CHUNK = 256  # texts per task: large enough that IPC is a few % of MeCab's time

_analyzer: Any = None  # the worker process's own analyzer


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_workers(n_docs: int | None) -> int:
    """``min(cpus, 4)`` for corpora above :data:`PARALLEL_MIN_DOCS` documents, else 1."""
    if n_docs is None or n_docs <= PARALLEL_MIN_DOCS:
        return 1
    return max(1, min(cpu_count(), MAX_DEFAULT_WORKERS))


def resolve_workers(workers: int | None, n_docs: int | None) -> int:
    """``workers`` validated; None or 0 means :func:`default_workers`."""
    if workers is None or workers == 0:
        return default_workers(n_docs)
    return check_int("workers", workers, 0, note=" (0 = automatic)")


def _shipped(analyzer: Any) -> tuple[str, Any]:
    """What a worker needs to rebuild ``analyzer``: its manifest config when that rebuilds it
    (every built-in analyzer: plain data, a Tagger never travels), else the object itself
    (a custom analyzer; multiprocessing then copies it to the worker)."""
    config = analyzer.to_config()
    try:
        if type(analyzer_from_config(config)) is type(analyzer):
            return ("config", config)
    except ConfigError:
        pass
    return ("object", analyzer)


def _init(kind: str, payload: Any) -> None:
    global _analyzer
    _analyzer = analyzer_from_config(payload) if kind == "config" else payload


# Token and document separators for shipping a chunk's tokens back as one string: pickling
# one string is a copy, pickling ~100k small strings cost ~15% of the tokenising time.
# Normalised text holds no control characters, so no token contains these.
_TOKEN_SEP, _DOC_SEP = "\x1f", "\x1e"


def _tokenize_chunk(texts: list[str]) -> str | list[list[str]]:
    tokens = [_analyzer.tokenize(t) for t in texts]
    joined = [_TOKEN_SEP.join(doc) for doc in tokens]
    # A custom analyzer might emit the separators: then the lists go as they are.
    if any(
        j.count(_TOKEN_SEP) != max(len(doc) - 1, 0) or _DOC_SEP in j or (doc == [""])
        for j, doc in zip(joined, tokens, strict=True)
    ):
        return tokens
    return _DOC_SEP.join(joined)


def _unpack(packed: str | list[list[str]], n: int) -> list[list[str]]:
    if isinstance(packed, list):
        return packed
    docs = packed.split(_DOC_SEP) if n > 1 else [packed]
    return [d.split(_TOKEN_SEP) if d else [] for d in docs]


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(islice(it, size)):
        yield chunk


def tokenize_parallel(
    analyzer: Any,
    texts: Iterable[str],
    *,
    total: int | None = None,
    progress: bool = True,
    workers: int = 1,
    chunk_size: int | None = None,
) -> Iterator[list[str]]:
    """``analyzer.tokenize`` of every text, in order; ``workers`` > 1 uses that many processes."""
    with tqdm(total=total, desc="tokenise", unit="doc", disable=not progress, smoothing=0.05) as bar:
        if workers <= 1:
            for text in texts:
                yield analyzer.tokenize(text)
                bar.update()
            return
        # forkserver/spawn, not fork: the parent may run threads (numba, torch, a server),
        # and forking those can deadlock a child on a lock held at fork time.
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        with ctx.Pool(workers, initializer=_init, initargs=_shipped(analyzer)) as pool:
            pending: deque[tuple[Any, int]] = deque()
            for chunk in _chunks(texts, chunk_size or CHUNK):
                pending.append((pool.apply_async(_tokenize_chunk, (chunk,)), len(chunk)))
                # A bounded window: reading ahead of the workers would hold the corpus in memory.
                while len(pending) >= 4 * workers:
                    done = _unpack(*_get(pending.popleft()))
                    bar.update(len(done))
                    yield from done
            while pending:
                done = _unpack(*_get(pending.popleft()))
                bar.update(len(done))
                yield from done


def _get(item: tuple[Any, int]) -> tuple[str | list[list[str]], int]:
    result, n = item
    return result.get(), n


def tokenize_all(
    analyzer: Analyzer,
    texts: Iterable[str],
    *,
    total: int | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Iterator[list[str]]:
    """Tokenise many texts in order, with a progress bar (in ``workers`` processes if > 1)."""
    yield from tokenize_parallel(analyzer, texts, total=total, progress=progress, workers=workers)

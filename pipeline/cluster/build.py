"""``tansaku build --ray``: a sharded index built on a Ray cluster, equal to the in-process build.

Where each stage runs:

1. **read** (Ray Data, one read task per input file, half a CPU): every record
   read and validated by tansaku's own reader;
2. **tokenise** (a Ray Data actor pool, half a CPU an actor): one analyzer per actor; the
   rows keep their input order (``preserve_order``);
3. **check** (the driver): the first bad record or duplicate id in input order stops the
   build with the in-process build's error;
4. **write** (one Ray task a shard): the shard's corpus, ids and term counts, written into
   the build's staging directory;
5. **reduce** (the driver): the shards' statistics merged into the corpus's
   (:meth:`~tansaku.index.stats.CorpusStats.merge`);
6. **weigh** (one Ray task a shard): BM25 weights with the corpus's statistics;
7. **encode** (a Ray Data actor pool, a GPU an actor when the cluster has GPUs): whole
   shards, in the batches the in-process build uses;
8. **FAISS** (the driver): trained once, on the rows an unsharded build samples; every
   shard gets its codes; then the manifest, and the staged directory is swapped in.

The staging directory sits beside INDEX, so on a cluster of several machines INDEX must be
on storage every node mounts at the same path (one machine: its local disk).

Ray Data actor pools that hold every CPU starve the read tasks and hang (ray-project/ray
#44687): the pools here ask for half a CPU an actor, so reads always find a CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence

from tansaku.index.analyzer import get_analyzer
from tansaku.index.atomic import staged
from tansaku.index.build_config import BuildConfig
from tansaku.index.build_encoder import prepare_encoder
from tansaku.index.build_sharded import finish_sharded
from tansaku.index.encoders import Encoder
from tansaku.index.errors import ConfigError, TansakuError
from tansaku.index.paths import check_index_target
from tansaku.index.records import FieldMap
from tansaku.index.sharded import ShardedIndex

from .options import RayOptions
from .session import connect, require_ray

__all__ = ["RayOptions", "build_on_ray"]

RAY_ADVICE = " attempts (total backoff "  # in the advice Ray Data appends to a task's error


def build_on_ray(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    config: BuildConfig,
    *,
    fields: FieldMap = FieldMap(),
    fmt: str | None = None,
    encoding: str = "utf-8",
    ray_options: RayOptions = RayOptions(),
    encoder: Encoder | str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ShardedIndex:
    """Build the sharded index at ``path`` from the files ``inputs`` on a Ray cluster, and open it.

    The index equals :func:`~tansaku.index.builder.build_index` of the same records with the
    same ``config`` (which must ask for shards): the same shards, statistics, arrays and
    search results. Like every build it is staged beside ``path`` and swapped in whole; bad
    input stops it with the in-process build's error (file, line, field) and leaves the
    previous index as it was. ``fields``/``fmt``/``encoding`` read the inputs as
    :func:`~tansaku.index.records.read_file` does; ``encoder`` overrides ``config.encoder``
    as in ``build_index`` (an object travels to the workers pickled).
    """
    ray = require_ray()
    if not config.sharded:
        raise ConfigError("a Ray build writes a sharded index: give --shards N or --shard-docs M")
    if not inputs:
        raise ConfigError("a Ray build reads document files: give at least one")
    path = check_index_target(path, inputs)
    say = log or _silent
    analyzer = get_analyzer(config.analyzer)
    config, spec, encoder = prepare_encoder(config, encoder, say)
    connect(ray_options.address)
    from .rows import input_files
    from .stages import Cluster, RayBuild

    cluster = Cluster.of(ray)
    say(f"ray: a cluster of {cluster}; the driver is this process, on {socket.gethostname()}")
    with _data_context(progress), staged(path, check=check_index_target) as tmp:
        try:
            run = RayBuild(ray, tmp, config, analyzer, cluster, ray_options, progress, say)
            parts = run.read_and_tokenise(input_files(inputs), fields, fmt, encoding)
            entries, own = run.write(parts)
            del parts  # the tokens may leave the object store
            stats = run.reduce_and_weigh(entries, own)
            spec, encoder = finish_sharded(
                tmp,
                entries,
                stats,
                config,
                analyzer,
                spec,
                encoder,
                progress=progress,
                say=say,
                timings=run.timings,
                tokenize_workers=run.tokenize_actors,
                encode_shards=lambda s, e: run.encode(entries, s, e),
                extra={"ray": cluster.describe()},
            )
        except Exception as exc:
            found = _user_error(exc)
            if found is exc:
                raise
            raise found from None
    return ShardedIndex.open(path, encoder=None if spec == "corpus" else encoder)


def _user_error(exc: Exception) -> Exception:
    """The error a worker raised for the user (bad data, a full disk...), out of Ray's
    wrappers; anything else (a bug, a lost node, an error on the driver) as it was raised."""
    from ray.exceptions import RayError

    error: BaseException = exc
    while isinstance(error, RayError):  # a RayTaskError may also be an instance of its cause's class
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None or inner is error:
            break
        error = inner
    if not isinstance(error, TansakuError | OSError):
        return exc
    _drop_ray_advice(error)
    return error


def _drop_ray_advice(error: BaseException) -> None:
    """Ray Data appends its retry advice ("Failed to ... after 1/1 attempts ...") to the message
    of an exception raised in a task (or as an argument of its own); the user's error is the
    message it was raised with."""
    kept: list[object] = []
    for arg in error.args:
        if isinstance(arg, str) and RAY_ADVICE in arg:
            arg = arg[: arg.rfind("Failed to ", 0, arg.index(RAY_ADVICE))].removesuffix("\n")
            if not arg:
                continue
        kept.append(arg)
    error.args = tuple(kept)


# Ray Data logs a failed task's traceback here before raising its error to the driver, which
# reports it (a user's error as its one line; anything else with its traceback).
_TASK_ERRORS_LOGGER = "ray.data._internal.execution.streaming_executor_state"


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data keeps rows in order and shows its progress only with ``progress`` (nothing at
    all without it); the caller's settings come back afterwards."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    loggers = [logging.getLogger(_TASK_ERRORS_LOGGER)] + ([] if progress else [logging.getLogger("ray.data")])
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start)
    levels = [logger.level for logger in loggers]
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _silent(_message: str) -> None:
    pass

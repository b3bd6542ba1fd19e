"""Crash-safe replacement of an index directory, and a single-writer lock.

A build writes everything into a temporary sibling directory, fsyncs it, then
swaps it in. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so
the index path always names a complete index; elsewhere two renames are used
and :func:`recover` repairs the (tiny) window between them on the next open.

Every entry point resolves symlinks first: ``idx`` and a link to it share one lock
and one swap, and the swap replaces the real directory, so the link stays a link. The lock
files (``.NAME.lock``, ``.NAME.swap-lock`` beside the index) exist only while in use
(:mod:`.locks`): nothing is left in the user's folder afterwards.
:func:`write_json` replaces one JSON file the same way (write beside it, fsync, rename).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError, IndexFormatError
from .locks import acquire, release
from .paths import real_path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def checkpoint(name: str) -> None:
    """A named point of a build/update where the crash-safety tests kill the process.

    With ``TANSAKU_CRASH_AT=name`` in the environment the process SIGKILLs itself
    here (no cleanup runs, as in a power cut); otherwise it does nothing.
    """
    if os.environ.get("TANSAKU_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _old_prefix(path: Path) -> str:
    return f".{path.name}.old-"


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full, in any of the ways its writers say it:
    an OSError, SQLite's "database or disk is full", FAISS's I/O assertion."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return isinstance(exc, (sqlite3.OperationalError, RuntimeError)) and (
        "disk is full" in text or "no space left" in text
    )


def temp_sibling(path: Path) -> Path:
    """A new empty directory beside ``path`` named for this process."""
    tmp = path.parent / f"{_tmp_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: Path) -> list[Path]:
    """Remove temporary/old siblings left by builds whose process is gone."""
    removed: list[Path] = []
    if not path.parent.exists():
        return removed
    for prefix in (_tmp_prefix(path), _old_prefix(path)):
        for entry in path.parent.glob(prefix + "*"):
            pid_part = entry.name[len(prefix) :].split("-", 1)[0]
            if pid_part.isdigit() and _pid_alive(int(pid_part)) and int(pid_part) != os.getpid():
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def fsync_tree(directory: Path) -> None:
    """Flush every file and directory under ``directory`` to disk."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` to ``path`` as UTF-8 JSON (non-ASCII kept, a final newline), atomically.

    The text goes to ``NAME.tmp`` in the same directory, is fsynced and renamed over
    ``path``, so a reader or a crash sees the old file or the new one, never part of one.
    One writer per file: the temporary name is fixed (an index lists it among its entries).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=indent)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2; False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    res = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _swap_lock(path: Path, exclusive: bool) -> Iterator[None]:
    """Readers (shared) never open files of two versions; the swap (exclusive) waits for them.

    Without it a reader could load bm25/ of one version and ids.npy of the next. On a
    read-only file system no writer can swap anyway, so readers go without the lock.
    """
    import fcntl

    lock_path = path.parent / f".{path.name}.swap-lock"
    try:
        fh = acquire(lock_path, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        release(fh, lock_path)


def reading(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold while opening the files of the index at ``path``."""
    return _swap_lock(real_path(path), exclusive=False)


def changing(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold while changing files of the index at ``path`` in place: readers wait to open it."""
    return _swap_lock(real_path(path), exclusive=True)


def swap_in(tmp: Path, path: Path) -> None:
    """Make the complete directory ``tmp`` the index at ``path``; the old one is deleted.

    Readers that already opened the old files keep them (open descriptors and memory
    maps survive the unlink); readers opening now wait for the swap.
    """
    path = real_path(path)
    fsync_tree(tmp)
    checkpoint("swap")
    with _swap_lock(path, exclusive=True):
        _swap(tmp, path)
    _fsync_dir(path.parent)


def _swap(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        checkpoint("swapped")
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous index
    else:
        old = path.parent / f"{_old_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
        checkpoint("renamed")
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


def recover(path: Path) -> None:
    """If a two-rename swap was interrupted, put the previous complete index back."""
    path = real_path(path)
    if path.exists():
        return
    olds = sorted(path.parent.glob(_old_prefix(path) + "*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], path)


@contextlib.contextmanager
def staged(path: Path, check: Callable[[Path], object] | None = None) -> Iterator[Path]:
    """Write a new version of the index at ``path`` in a temporary sibling, then swap it in.

    Holds the writer lock throughout; ``check(real path)`` runs under it first, so a guard
    such as :func:`~tansaku.index.paths.check_index_target` sees what the swap will
    replace. On any error (or interruption) the temporary directory is removed and
    ``path`` is left exactly as it was.
    """
    path = real_path(path)
    with write_lock(path):
        if check is not None:
            check(path)
        clean_stale(path)
        tmp = temp_sibling(path)
        try:
            yield tmp
            swap_in(tmp, path)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if disk_full(exc):
                raise DiskFullError(
                    f"no space left on the device of {path.parent} while writing the new version of "
                    f"{path.name}; the previous index is unchanged. Free space (a build needs room "
                    "for a second copy of the index beside the first) and run it again"
                ) from exc
            raise


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the index's writer lock (``.NAME.lock`` beside it while held); a second writer
    fails clearly, naming the process that holds it."""
    import fcntl

    path = real_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    try:
        fh = acquire(lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = lock_path.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise IndexFormatError(
            f"index {path} is being written by {holder}; wait for it to finish (lock file {lock_path})"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.seek(0)
        fh.truncate()
        release(fh, lock_path)

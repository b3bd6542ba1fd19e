"""Lock files that exist only while they are in use (``flock``, removed by the last holder).

Why beside the index and not in a runtime directory: every process that touches an index must
find the same lock, whatever its environment (``$TMPDIR``, ``$XDG_RUNTIME_DIR``), user or
container; only the index's own folder is shared by all of them. So the lock file stays there,
but no longer outlives its use: whoever releases a lock and can then take it exclusively (so
nobody else holds it) deletes the file. Search, build and update leave nothing behind.

The protocol that keeps this as strong as a permanent lock file: a file is only ever deleted
by a process holding an exclusive lock on it, and everyone who acquires a lock checks that the
file it locked is still the one at the path (not deleted meanwhile); if not, it locks afresh.
So two holders can never hold conflicting locks on the same path at once. A crashed holder's
lock is released by the kernel; its file is deleted by the next user.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def _is_at(fh: TextIO, path: Path) -> bool:
    """Whether the open file ``fh`` is the file now at ``path``."""
    try:
        at = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fh.fileno())
    return (at.st_dev, at.st_ino) == (own.st_dev, own.st_ino)


def acquire(path: Path, operation: int) -> TextIO:
    """Open (creating) the lock file ``path`` and ``flock`` it with ``operation``.

    ``LOCK_NB`` raises BlockingIOError when the lock is held elsewhere; an OSError from
    opening (a read-only folder) propagates.
    """
    import fcntl

    while True:
        fh = open(path, "a+")  # noqa: SIM115  (returned to the caller, closed by release)
        try:
            fcntl.flock(fh, operation)
        except BaseException:
            fh.close()
            raise
        if _is_at(fh, path):
            return fh
        fh.close()  # deleted by its last holder while this one waited: lock the file there now


def release(fh: TextIO, path: Path) -> None:
    """Release a lock from :func:`acquire`, deleting the file when nobody else holds it."""
    import fcntl

    try:
        try:
            # an exclusive lock proves no one else holds it (waiters re-check, see acquire)
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        if _is_at(fh, path):
            with contextlib.suppress(OSError):  # a folder we may not write: the file stays
                os.unlink(path)
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def holding(path: Path, operation: int) -> Iterator[TextIO]:
    """Hold the lock file ``path`` (``fcntl.LOCK_SH`` or ``LOCK_EX``, maybe ``| LOCK_NB``)."""
    fh = acquire(path, operation)
    try:
        yield fh
    finally:
        release(fh, path)

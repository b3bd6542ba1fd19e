"""Where tansaku may write: real paths, and never over files a user owns.

A build or update replaces the whole directory at its path, so it must only ever
replace something tansaku wrote there. Two rules guard the user's files:

- every writer resolves symlinks first (:func:`real_path`), so ``idx`` and a link to
  it are one index with one lock, and the link stays a link;
- a path that exists must be an index (or an empty directory) before a build may
  replace it (:func:`check_index_target`); model and run-file outputs get the same
  check against their own marker files (:func:`check_output_dir`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ConfigError

MANIFEST = "manifest.json"
FORMAT = "tansaku-index"
ENCODER_DIR = "encoder"  # a corpus-trained encoder, when the index has one

# What an index directory holds (SQLite may leave its journal files beside the corpus).
INDEX_ENTRIES = frozenset(
    {
        MANIFEST,
        MANIFEST + ".tmp",
        "corpus.sqlite",
        "corpus.sqlite-journal",
        "corpus.sqlite-wal",
        "corpus.sqlite-shm",
        "ids.npy",
        "bm25",
        "dense",
        ENCODER_DIR,
        "stats",  # a sharded index: the corpus-wide BM25 statistics
        "shards",  # ... and its shards
    }
)


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` absolute with every symlink resolved (the path need not exist yet)."""
    return Path(path).expanduser().resolve()


def _manifest_format(directory: Path) -> str | None:
    try:
        with open(directory / MANIFEST, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def is_index_dir(path: Path) -> bool:
    """True when ``path`` is a tansaku index directory, of any format version, or a damaged one.

    A damaged index (unreadable manifest) still counts when every entry in it is one an
    index holds, so a user can rebuild over it; anything else there means it is not ours.
    """
    if not path.is_dir() or not (path / MANIFEST).is_file():
        return False
    if _manifest_format(path) == FORMAT:
        return True
    return all(entry.name in INDEX_ENTRIES for entry in path.iterdir())


def _listing(path: Path, limit: int = 3) -> str:
    names = sorted(entry.name for entry in path.iterdir())
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return f"it holds {shown}"


def check_index_target(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """The real path a build may replace; ConfigError when something of the user's is there.

    Replacing an existing index is the normal case, and so is an empty directory or a
    path that does not exist yet. A file, or a directory holding anything but an index,
    is refused, as is an index directory that contains one of the build's ``inputs``.
    """
    target = real_path(path)
    for source in inputs:
        src = real_path(source)
        if src == target or target in src.parents:
            raise ConfigError(
                f"refusing to build the index at {target}: the input {source} is inside it and "
                "would be lost; choose a new directory for the index (did you swap the "
                "INDEX and input arguments?)"
            )
    if not target.exists():
        return target
    if not target.is_dir():
        raise ConfigError(
            f"refusing to build an index at {target}: it is a file, not an index, and a build "
            "would replace it; choose a new directory for the index (did you swap the INDEX "
            "and input arguments? INDEX comes first)"
        )
    if any(target.iterdir()) and not is_index_dir(target):
        raise ConfigError(
            f"refusing to build an index at {target}: the directory is not a tansaku index "
            f"({_listing(target)}) and a build would replace it; choose a new or empty "
            "directory for the index"
        )
    return target


def check_output_dir(
    path: str | os.PathLike[str], *, what: str, ours: Callable[[Path], bool], remedy: str
) -> Path:
    """The real path of an output directory; ConfigError when it holds something not ``ours``.

    ``what`` names the output in the message ("model directory"); ``ours`` says whether an
    existing, non-empty directory is one tansaku wrote; ``remedy`` ends the message.
    """
    target = real_path(path)
    if not target.exists():
        return target
    if not target.is_dir():
        raise ConfigError(f"refusing to write the {what} to {target}: it is a file; {remedy}")
    if any(target.iterdir()) and not ours(target):
        raise ConfigError(
            f"refusing to write the {what} to {target}: the directory was not written by "
            f"tansaku ({_listing(target)}); {remedy}"
        )
    return target


def missing_index_message(path: Path) -> str:
    """Why there is no index at ``path``, and what to do, without risking the user's files."""
    if path.is_file() or (path.exists() and not path.is_dir()):
        return (
            f"no index at {path}: it is a file, not an index directory (did you swap the "
            "arguments? the index directory comes first)"
        )
    return f"no index at {path}: build one with `tansaku build {path} DOCS`"

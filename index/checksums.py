"""The size and CRC-32 of every file of an index, recorded in its manifest (``files``).

A build or update computes them in the staged directory just before it writes the manifest,
so they describe exactly what is swapped in; ``tansaku check`` recomputes them. CRC-32
(``zlib.crc32``, as Lucene's per-file footers use) reads at ~5 GB/s from the page cache here
(scripts/bench_integrity.py), several times faster than any cryptographic hash in the
standard library (blake2b ~1.2 GB/s, sha256 ~1.5 GB/s); detecting damage, not tampering,
is the goal. Files are checksummed in a few threads: ``zlib.crc32`` releases the GIL.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .paths import MANIFEST

ALGORITHM = "crc32"
_CHUNK = 1 << 20
_THREADS = 4
# What may sit in an index directory without being part of it: SQLite's journals (a reader
# never writes them, but a crashed writer may leave one) and a manifest being replaced.
_TRANSIENT_SUFFIXES = (".tmp", "-journal", "-wal", "-shm")

FileTable = dict[str, dict[str, Any]]
"""Relative POSIX path -> ``{"size": bytes, "crc32": "8 hex digits"}``."""

_Key = tuple[int, int, int, int]  # device, inode, size, mtime: the same file, unchanged


def file_checksum(path: str | os.PathLike[str]) -> str:
    """The CRC-32 of the file at ``path`` as 8 hex digits (read in 1 MiB chunks)."""
    crc = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def index_files(root: Path) -> list[str]:
    """The files under ``root`` that belong to the index (relative POSIX paths, sorted).

    Left out: the manifest itself, hidden staging entries (``.tf``, ``.ingest.sqlite``...)
    and transient files (journals, ``*.tmp``).
    """
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or name.endswith(_TRANSIENT_SUFFIXES):
                continue
            rel = Path(directory, name).relative_to(root).as_posix()
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


def _key(stat: os.stat_result) -> _Key:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def known_checksums(root: Path, table: Mapping[str, Mapping[str, Any]] | None) -> dict[_Key, dict[str, Any]]:
    """The recorded entries of the index at ``root``, keyed by the file they describe.

    An update hard-links unchanged files into its new version; :func:`file_table` finds
    them here and keeps their recorded checksum instead of reading them again (a file
    damaged since then keeps failing ``tansaku check``, rather than being blessed).
    """
    known: dict[_Key, dict[str, Any]] = {}
    for rel, entry in (table or {}).items():
        try:
            stat = os.stat(root / rel)
        except OSError:
            continue
        if stat.st_size == entry.get("size") and ALGORITHM in entry:
            known[_key(stat)] = dict(entry)
    return known


def file_table(root: Path, known: Mapping[_Key, Mapping[str, Any]] | None = None) -> FileTable:
    """Size and checksum of every file of the index staged at ``root`` (see :func:`index_files`).

    ``known`` (from :func:`known_checksums`) supplies the entries of files taken over
    unchanged from the previous version.
    """
    names = index_files(root)
    table: FileTable = {}
    todo: list[str] = []
    for rel in names:
        stat = os.stat(root / rel)
        reuse = (known or {}).get(_key(stat))
        if reuse is not None:
            table[rel] = dict(reuse)
        else:
            table[rel] = {"size": stat.st_size}
            todo.append(rel)
    for rel, crc in zip(todo, checksums(root / rel for rel in todo), strict=True):
        table[rel][ALGORITHM] = crc
    return {rel: table[rel] for rel in names}


def checksums(paths: Iterable[Path]) -> list[str]:
    """:func:`file_checksum` of each path, in order (a few files at a time)."""
    paths = list(paths)
    if len(paths) <= 1:
        return [file_checksum(p) for p in paths]
    with ThreadPoolExecutor(min(_THREADS, len(paths)), thread_name_prefix="tansaku-crc") as pool:
        return list(pool.map(file_checksum, paths))


def rerecord(directory: Path, changed: Iterable[str]) -> None:
    """Record the new size and checksum of files of the index at ``directory`` that were just
    changed in place (``create_field_index``'s corpus), rewriting its manifest atomically.

    A manifest without checksums (an older index) is left as it is.
    """
    from dataclasses import replace

    from .manifest import IndexManifest

    manifest = IndexManifest.load(directory)
    if manifest.files is None:
        return
    files = {rel: dict(entry) for rel, entry in manifest.files.items()}
    for rel in changed:
        files[rel] = {"size": os.stat(directory / rel).st_size, ALGORITHM: file_checksum(directory / rel)}
    replace(manifest, files=files).save(directory)


def verify_recorded(directory: Path, rel: str) -> str | None:
    """What is wrong with one recorded file of the index at ``directory`` (None: it matches,
    or the manifest records no checksum for it)."""
    from .manifest import IndexManifest

    entry = (IndexManifest.load(directory).files or {}).get(rel)
    if entry is None or ALGORITHM not in entry:
        return None
    size = os.stat(directory / rel).st_size
    if size != entry["size"]:
        return f"is {size:,} bytes but was written as {entry['size']:,}"
    crc = file_checksum(directory / rel)
    if crc != entry[ALGORITHM]:
        return f"does not match its checksum ({ALGORITHM} {crc}, written as {entry[ALGORITHM]})"
    return None

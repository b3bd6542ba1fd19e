"""``manifest.json``: what an index directory holds and how it was built."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import IndexFormatError
from .paths import FORMAT, MANIFEST, missing_index_message

FORMAT_VERSION = 1

_PACKAGES = (
    "tansaku",
    "numpy",
    "scipy",
    "faiss-cpu",
    "fugashi",
    "unidic-lite",
    "sqlite-utils",
    "sentence-transformers",
    "transformers",
    "torch",
    "rank-bm25",
)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages an index's contents depend on (None if absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def new_manifest(**sections: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        **sections,
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, after checking it is a tansaku index of a format this version reads."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise IndexFormatError(missing_index_message(directory))
    if not path.is_file():
        raise IndexFormatError(f"{directory} is not a tansaku index (no {MANIFEST})")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a tansaku index manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise IndexFormatError(
            f"index {directory} has format version {version}; this tansaku reads version "
            f"{FORMAT_VERSION}. "
            + ("Upgrade tansaku to open it." if newer else "Rebuild it with `tansaku build`.")
        )
    return manifest

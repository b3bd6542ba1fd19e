"""``manifest.json``: what an index directory holds and how it was built.

:class:`IndexManifest` is its typed form. :meth:`IndexManifest.to_dict` writes the JSON key
for key as earlier versions did, so indexes built before open and update unchanged. Each
section keeps keys this version does not know in ``extra`` and writes them back; a field
that is None is left out of the JSON unless the format writes it as ``null`` (``dense``,
``build.encoder_choice``), so a key an older version never wrote stays absent.
"""

from __future__ import annotations

import copy
import json
import platform
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .atomic import write_json
from .errors import IndexFormatError, damaged
from .paths import FORMAT, INDEX_ENTRIES, MANIFEST, missing_index_message

FORMAT_VERSION = 2  # 2: sharded indexes (``shards``, ``stats``, ``generation``)
MIN_FORMAT_VERSION = 1  # version 1 indexes (one shard, no such keys) open unchanged

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Incomplete(ValueError):
    """A manifest section lacks a key or is not a JSON object (reported as IndexFormatError)."""


def _check_files(files: Any) -> None:
    """``files`` maps relative paths inside the index to ``{"size": int, ...}``."""
    if not isinstance(files, Mapping):
        raise _Incomplete("files is not a JSON object")
    for rel, entry in files.items():
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise _Incomplete(f"files names {rel!r}, outside the index")
        if not isinstance(entry, Mapping) or not isinstance(entry.get("size"), int):
            raise _Incomplete(f"files[{rel!r}] has no integer size")


S = TypeVar("S", bound="_Section")


class _Section:
    """A JSON object with typed fields in the format's key order, then unknown keys (``extra``)."""

    _NULLABLE: ClassVar[frozenset[str]] = frozenset()  # written as null rather than left out
    _REQUIRED: ClassVar[tuple[str, ...]] = ()
    extra: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in self._NULLABLE):
                continue
            out[f.name] = _plain(value)
        out.update(copy.deepcopy(dict(self.extra)))
        return out

    @classmethod
    def _split(cls, data: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(known fields, unknown keys) of ``data``; _Incomplete when it cannot be this section."""
        if not isinstance(data, Mapping):
            raise _Incomplete(f"{where} is not a JSON object")
        for key in cls._REQUIRED:
            if key not in data:
                raise _Incomplete(f"{where} has no {key!r}")
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        return (
            {k: v for k, v in data.items() if k in known},
            {k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_dict(cls: type[S], data: Any, where: str) -> S:
        """The section read from its JSON object (plain values only; override for nested ones)."""
        known, extra = cls._split(data, where)
        return cls(**known, extra=extra)  # type: ignore[call-arg]  # subclasses are dataclasses


def _plain(value: Any) -> Any:
    """A field's JSON value (sections and tuples of them become dicts and lists)."""
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data[key]
    if not isinstance(value, Mapping):
        raise _Incomplete(f"{where}.{key} is not a JSON object")
    return value


@dataclass(frozen=True, kw_only=True)
class BM25Section(_Section):
    """``bm25``: the scoring parameters (:class:`~tansaku.index.BM25Params` as a dict) and sizes."""

    _REQUIRED = ("params",)

    params: Mapping[str, Any]
    docs: int | None = None
    terms: int | None = None
    postings: int | None = None
    dense_terms: int | None = None
    avgdl: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "bm25") -> BM25Section:
        known, extra = cls._split(data, where)
        _mapping(known, "params", where)
        return cls(**known, extra=extra)


@dataclass(frozen=True, kw_only=True)
class DenseSection(_Section):
    """``dense``: the encoder's ``to_config()``, the FAISS parameters (a dict) and why that index."""

    _REQUIRED = ("encoder", "faiss")

    encoder: Mapping[str, Any]
    faiss: Mapping[str, Any]
    reason: str | None = None
    dim: int | None = None
    vectors: int | None = None
    faiss_version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "dense") -> DenseSection:
        known, extra = cls._split(data, where)
        _mapping(known, "encoder", where)
        _mapping(known, "faiss", where)
        return cls(**known, extra=extra)


@dataclass(frozen=True, kw_only=True)
class BuildSection(_Section):
    """``build``: the build's configuration, timings (seconds per stage) and encoder choice."""

    _NULLABLE = frozenset({"encoder_choice"})

    config: Mapping[str, Any] | None = None
    seconds: Mapping[str, float] | None = None
    encoder_choice: str | None = None  # why "auto"/"corpus" chose the encoder it did
    tokenize_workers: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UpdateRecord(_Section):
    """One entry of ``updates``: what an incremental update changed."""

    _REQUIRED = ("added", "replaced", "deleted", "seconds")

    added: int
    replaced: int
    deleted: int
    seconds: float
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ShardEntry(_Section):
    """One shard of a sharded index: its directory (relative to the index) and the contiguous
    range of global document positions it holds (``start`` .. ``start + count - 1``)."""

    _REQUIRED = ("dir", "start", "count")

    dir: str
    start: int
    count: int
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class IndexManifest(_Section):
    """What an index directory holds and how it was built (``manifest.json``).

    ``analyzer`` is the analyzer's ``to_config()``; ``dense`` is None for a BM25-only index;
    ``updates`` (None until the first update) holds the last 100 incremental updates.
    A sharded index lists its ``shards``, the corpus-wide BM25 ``stats`` every shard is
    weighed with (sizes; the arrays live in ``stats/``) and its ``generation`` (one more
    per update); for a one-shard index they are None.
    ``files`` maps every other file of the index (relative path) to its ``size`` and
    ``crc32`` (:mod:`tansaku.index.checksums`); None in a manifest written before them,
    whose files open unverified.
    A new manifest gets this version's format, the time and the package versions.
    """

    _NULLABLE = frozenset({"dense"})
    _REQUIRED = ("analyzer", "bm25")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created_at: str | None = field(default_factory=_now)
    versions: Mapping[str, str | None] | None = field(default_factory=package_versions)
    counts: Mapping[str, int] | None = None
    analyzer: Mapping[str, Any]
    bm25: BM25Section
    dense: DenseSection | None = None
    build: BuildSection | None = None
    updates: tuple[UpdateRecord, ...] | None = None
    shards: tuple[ShardEntry, ...] | None = None
    stats: Mapping[str, Any] | None = None
    generation: int | None = None
    files: Mapping[str, Mapping[str, Any]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "index manifest") -> IndexManifest:
        """The manifest of a JSON object; IndexFormatError when a section is missing or malformed.

        ``where`` names the source in the error (``Index.open`` passes ``index PATH``).
        """
        try:
            known, extra = cls._split(data, MANIFEST)
            _mapping(known, "analyzer", MANIFEST)
            known["bm25"] = BM25Section.from_dict(known["bm25"], "bm25")
            # An empty or null ``dense`` is a BM25-only index, as it always was.
            known["dense"] = DenseSection.from_dict(known["dense"], "dense") if known.get("dense") else None
            if known.get("build") is not None:
                known["build"] = BuildSection.from_dict(known["build"], "build")
            if known.get("updates") is not None:
                if not isinstance(known["updates"], list):
                    raise _Incomplete("updates is not a JSON list")
                known["updates"] = tuple(
                    UpdateRecord.from_dict(u, f"updates[{i}]") for i, u in enumerate(known["updates"])
                )
            if known.get("shards") is not None:
                if not isinstance(known["shards"], list) or not known["shards"]:
                    raise _Incomplete("shards is not a non-empty JSON list")
                known["shards"] = tuple(
                    ShardEntry.from_dict(e, f"shards[{i}]") for i, e in enumerate(known["shards"])
                )
                if not isinstance(known.get("stats"), Mapping):
                    raise _Incomplete("a sharded index has no stats object")
            if known.get("files") is not None:
                _check_files(known["files"])
        except _Incomplete as exc:
            raise IndexFormatError(f"{where} is incomplete or inconsistent: {exc}") from None
        # Keys absent from an older manifest stay absent (None), not today's defaults.
        absent = {f.name: None for f in fields(cls) if f.name not in known and f.name != "extra"}
        return cls(**{**absent, **known}, extra=extra)

    @classmethod
    def load(cls, directory: str | Path) -> IndexManifest:
        """The manifest of the index at ``directory``, after checking it is a tansaku index of a
        format this version reads (IndexFormatError, saying what to do, otherwise)."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not directory.is_dir():
            raise IndexFormatError(missing_index_message(directory))
        if not path.is_file():
            if any(entry.name in INDEX_ENTRIES for entry in directory.iterdir()):
                raise damaged(directory, MANIFEST, "is missing")
            raise IndexFormatError(f"{directory} is not a tansaku index (no {MANIFEST})")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise damaged(directory, MANIFEST, f"is corrupt ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexFormatError(f"{path} is not a tansaku index manifest")
        version = data.get("format_version")
        if not isinstance(version, int) or not MIN_FORMAT_VERSION <= version <= FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise IndexFormatError(
                f"index {directory} has format version {version}; this tansaku reads versions "
                f"{MIN_FORMAT_VERSION} to {FORMAT_VERSION}. "
                + ("Upgrade tansaku to open it." if newer else "Rebuild it with `tansaku build`.")
            )
        return cls.from_dict(data, f"index {directory}")

    def save(self, directory: str | Path) -> None:
        """Write ``directory/manifest.json`` atomically (a reader never sees half of it)."""
        write_json(Path(directory) / MANIFEST, self.to_dict())

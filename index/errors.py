"""Exceptions with messages a user can act on."""

from __future__ import annotations


class TansakuError(Exception):
    """Base class of every error tansaku raises on purpose."""


def location(
    source: str | None = None, line: int | None = None, field: str | None = None, unit: str = "line"
) -> str:
    """Where something is, in the one wording every message uses: ``file, line N, field 'x'``
    (``unit`` is ``record`` for records of a Python iterable); parts not given are left out."""
    where = []
    if source is not None:
        where.append(str(source))
    if line is not None:
        where.append(f"{unit} {line}")
    if field is not None:
        where.append(f"field {field!r}")
    return ", ".join(where)


class IngestError(TansakuError, ValueError):
    """A record could not be ingested; the message names file, line/record and field."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        where = location(source, line, field, unit)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.line = line
        self.field = field


class ModelLoadError(TansakuError, OSError):
    """A model could not be loaded (unknown id, no network, bad directory)."""


class IndexFormatError(TansakuError, OSError):
    """An index directory is missing, incomplete or of an unsupported format version."""


class IndexCorruptError(IndexFormatError):
    """An index file is missing, truncated or damaged; the message names the file and says
    what to do (rebuild or restore; ``tansaku check INDEX`` verifies every file)."""

    def __init__(self, message: str, *, file: str | None = None, what: str | None = None) -> None:
        super().__init__(message)
        self.file = file  # relative to the index, as its manifest names it
        self.what = what or message  # what is wrong with it, without the advice


def damaged(index: object, file: str, what: str) -> IndexCorruptError:
    """The :class:`IndexCorruptError` for ``file`` (relative to the index) that ``what``:
    "index IDX: bm25/postings.npy is truncated (...); rebuild the index or restore it ..."."""
    return IndexCorruptError(
        f"index {index}: {file} {what}; rebuild the index or restore it from a backup "
        f"(`tansaku check {index}` verifies every file)",
        file=file,
        what=what,
    )


class DiskFullError(TansakuError, OSError):
    """The disk filled up while a new index version was written; the previous one is intact."""


class ConfigError(TansakuError, ValueError):
    """An invalid parameter value (a k, a mode, an analyzer name...)."""

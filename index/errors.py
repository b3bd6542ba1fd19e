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


class DiskFullError(TansakuError, OSError):
    """The disk filled up while a new index version was written; the previous one is intact."""


class ConfigError(TansakuError, ValueError):
    """An invalid parameter value (a k, a mode, an analyzer name...)."""

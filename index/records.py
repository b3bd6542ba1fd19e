"""Reading corpus records from JSONL, CSV/TSV files and Python iterables.

Every record is validated as it is read; a bad one raises :class:`IngestError`
naming the file, line (or record number) and field, so the caller can abort the
ingest before anything is committed.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IngestError, location
from .hit import indexed_text

FORMATS = ("jsonl", "csv", "tsv")


@dataclass(frozen=True)
class FieldMap:
    """Which input fields hold the id, title and text (every other field is metadata),
    and the largest text accepted.

    The limit (in characters) catches files that are not passage collections: a
    retrieve-and-rerank engine scores passages, and one multi-megabyte "document"
    would dominate tokenisation time and memory. Split long documents into passages.
    """

    id: str = "id"
    text: str = "text"
    title: str | None = "title"
    max_chars: int = 1_000_000


@dataclass(frozen=True)
class Record:
    """One validated document."""

    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False)  # "file, line N", for error messages

    @property
    def indexed_text(self) -> str:
        """What the analyzers and encoders see: "title text" (as the JQaRA evaluator does)."""
        return indexed_text(self.title, self.text)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file name (``.gz`` allowed)."""
    name = str(path).lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    raise IngestError(
        "cannot tell the format from the file name; pass --format jsonl|csv|tsv", source=str(path)
    )


def _scalar_or_list(value: Any) -> bool:
    if isinstance(value, bool | int | str) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_scalar_or_list(v) and not isinstance(v, list) for v in value)
    return False


_INT64 = (-(2**63), 2**63 - 1)


def _values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_record(raw: Any, fields: FieldMap, *, source: str, line: int, unit: str = "line") -> Record:
    """Validate one raw mapping and turn it into a :class:`Record`.

    ``line`` is the 1-based line (files) or record number (iterables, ``unit="record"``).
    """

    def fail(message: str, field: str | None = None) -> IngestError:
        return IngestError(message, source=source, line=line, field=field, unit=unit)

    if not isinstance(raw, Mapping):
        raise fail(f"expected a JSON object, got {type(raw).__name__}")
    if fields.id not in raw or raw[fields.id] in (None, ""):
        raise fail("missing id" + _field_hint(raw, fields.id, "--id-field"), fields.id)
    doc_id = raw[fields.id]
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise fail(f"id must be a string or integer, got {type(doc_id).__name__}", fields.id)
    text = raw.get(fields.text)
    if text is None:
        raise fail("missing text" + _field_hint(raw, fields.text, "--text-field"), fields.text)
    if not isinstance(text, str):
        raise fail(f"text must be a string, got {type(text).__name__}", fields.text)
    if not text.strip():
        raise fail("text is empty", fields.text)
    if len(text) > fields.max_chars:
        raise fail(
            f"text has {len(text):,} characters, more than the limit of "
            f"{fields.max_chars:,}; split it into passages (or raise --max-chars)",
            fields.text,
        )
    title = raw.get(fields.title, "") if fields.title else ""
    if title is None:
        title = ""
    if not isinstance(title, str):
        raise fail(f"title must be a string, got {type(title).__name__}", fields.title)
    reserved = {fields.id, fields.text, "metadata"} | ({fields.title} if fields.title else set())
    metadata: dict[str, Any] = {}
    explicit = raw.get("metadata")
    if explicit is not None:
        if not isinstance(explicit, Mapping):
            raise fail("metadata must be an object", "metadata")
        metadata.update(explicit)
    metadata.update({k: v for k, v in raw.items() if k not in reserved})
    for key, value in metadata.items():
        if not _scalar_or_list(value):
            raise fail("metadata values must be scalars or lists of scalars", key)
        if any(isinstance(v, int) and not _INT64[0] <= v <= _INT64[1] for v in _values(value)):
            raise fail("integer outside the 64-bit range (store it as a string)", key)
    for name, value in ((fields.id, doc_id), (fields.text, text), (fields.title, title), *metadata.items()):
        if any(isinstance(v, str) and not _unicode(v) for v in (name, *_values(value))):
            raise fail("not valid Unicode (a lone surrogate, e.g. a \\ud800 escape)", name)
    return Record(str(doc_id), text, title, metadata, origin=location(source, line, unit=unit))


def _field_hint(raw: Mapping[str, Any], name: str, option: str) -> str:
    """When the record has no field ``name`` at all: its fields, and the option naming another."""
    if name in raw:
        return ""
    others = ", ".join(repr(k) for k in list(raw)[:8]) + (", ..." if len(raw) > 8 else "")
    return f" (the record has {others or 'no fields'}; {option} NAME reads it from another field)"


def _lines(path: Path, encoding: str, source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every physical line, each decoded strictly on its own.

    Line by line, so a bad byte is reported on its own line (a buffered text stream fails a
    whole block ahead of the parser). UTF-8 may start with a BOM.
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise IngestError(f"unknown encoding {encoding!r}", source=source) from None
    utf8 = codecs.lookup(encoding).name == "utf-8"
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with raw:
        for line_no, data in enumerate(raw, 1):
            try:
                yield line_no, data.decode("utf-8-sig" if utf8 and line_no == 1 else encoding)
            except UnicodeDecodeError as exc:
                hint = "; a file saved by Excel is often Shift-JIS: try --encoding cp932" if utf8 else ""
                raise IngestError(
                    f"not valid {'UTF-8' if utf8 else encoding} (byte {exc.start}){hint}",
                    source=source,
                    line=line_no,
                ) from None


def _read_jsonl(path: Path, fields: FieldMap, encoding: str, source: str) -> Iterator[Record]:
    for line_no, line in _lines(path, encoding, source):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", source=source, line=line_no
            ) from None
        except RecursionError:
            raise IngestError(
                "invalid record: arrays or objects nested too deeply", source=source, line=line_no
            ) from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise IngestError(f"invalid JSON: {exc}", source=source, line=line_no) from None
        yield to_record(obj, fields, source=source, line=line_no)


def _read_delimited(
    path: Path, fields: FieldMap, delimiter: str, encoding: str, source: str
) -> Iterator[Record]:
    lines = (text for _, text in _lines(path, encoding, source))
    try:
        reader = csv.DictReader(lines, delimiter=delimiter, strict=True)
        header = reader.fieldnames or []
        for name, option in ((fields.id, "--id-field"), (fields.text, "--text-field")):
            if name not in header:
                raise IngestError(
                    f"no column {name!r} in header {header}; {option} NAME reads it from another column",
                    source=source,
                    line=1,
                    field=name,
                )
        for row in reader:
            if None in row:
                raise IngestError("more cells than header columns", source=source, line=reader.line_num)
            values = {k: v for k, v in row.items() if v is not None}
            yield to_record(values, fields, source=source, line=reader.line_num)
    except csv.Error as exc:
        raise IngestError(
            f"malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}",
            source=source,
            line=reader.line_num,
        ) from None


def read_file(
    path: str | os.PathLike[str],
    fields: FieldMap = FieldMap(),
    fmt: str | None = None,
    encoding: str = "utf-8",
    *,
    source: str | None = None,
) -> Iterator[Record]:
    """Records of a JSONL/CSV/TSV file (optionally gzipped), validated one by one.

    ``encoding`` decodes the file strictly (e.g. ``cp932`` for Excel's Shift-JIS CSV); a bad
    byte is an error naming its line. ``source``: the file's name in errors and record
    origins (default: ``path`` as given), for a reader that opens it by another path.
    """
    path = Path(path)
    source = str(path) if source is None else source
    if not path.is_file():
        raise IngestError("no such file", source=source)
    fmt = fmt or detect_format(source)
    if fmt == "jsonl":
        return _read_jsonl(path, fields, encoding, source)
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, fields, "," if fmt == "csv" else "\t", encoding, source)
    raise IngestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", source=source)


def read_dicts(
    rows: Iterable[Mapping[str, Any]], fields: FieldMap = FieldMap(), source: str = "<records>"
) -> Iterator[Record]:
    """Records of an iterable of dicts; errors name the record number (1-based)."""
    for number, row in enumerate(rows, 1):
        yield to_record(row, fields, source=source, line=number, unit="record")


def unique_ids(records: Iterable[Record]) -> Iterator[Record]:
    """Pass records through, failing on an id seen earlier in the same batch."""
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise IngestError(
                f"duplicate id {record.id!r} (first at {seen[record.id]}) within one ingest",
                source=record.origin,
                field="id",
            )
        seen[record.id] = record.origin
        yield record

"""Records as Ray Data rows: read and validated by tansaku's own reader, errors kept in order.

A read task reads one input file with :func:`tansaku.index.records.read_file` (the reader and
the validation of every in-process build) and turns the records into Arrow blocks. A bad
record does not fail the task: it becomes the file's last row, carrying its error, and the
driver raises the first error in input order (:func:`check_rows`), so a build on Ray stops
with exactly the error, and at exactly the record, that the in-process build stops at, even
when a later file's read task finished first. Duplicate ids are found the same way, by
:func:`~tansaku.index.records.unique_ids` over the rows in order.

Nothing here imports Ray: the functions run inside Ray tasks, but are plain Python.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tansaku.index.errors import IngestError, TansakuError
from tansaku.index.hit import indexed_text
from tansaku.index.records import FieldMap, Record, read_file, unique_ids

SCHEMA = pa.schema(
    [
        ("file", pa.int32()),  # the input's position among the inputs
        ("pos", pa.int64()),  # the record's position in its file
        ("id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("metadata", pa.string()),  # JSON, as the corpus stores it
        ("origin", pa.string()),  # "file:line", for the duplicate-id message
        ("error", pa.string()),  # the row is no record but this IngestError (its full message)
        ("error_source", pa.string()),
        ("error_line", pa.int64()),
        ("error_field", pa.string()),
    ]
)
CHECKED = ["file", "pos", "id", "origin", "error", "error_source", "error_line", "error_field"]


@dataclass(frozen=True)
class InputFile:
    """One input: where a worker opens it, the name its errors give (as the user wrote it),
    its place among the inputs, and whether the driver saw it (a file the driver sees and a
    worker does not is a cluster without shared storage, not a missing input)."""

    path: str
    source: str
    number: int
    seen: bool = False


class _Block:
    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}

    def __len__(self) -> int:
        return len(self.columns["id"])

    def add(self, number: int, pos: int, record: Record | None, error: IngestError | None = None) -> None:
        row: dict[str, Any] = dict.fromkeys(SCHEMA.names)
        row.update(file=number, pos=pos)
        if record is not None:
            row.update(
                id=record.id,
                title=record.title,
                text=record.text,
                metadata=json.dumps(dict(record.metadata), ensure_ascii=False),
                origin=record.origin,
            )
        if error is not None:
            row.update(
                error=str(error), error_source=error.source, error_line=error.line, error_field=error.field
            )
        for name, value in row.items():
            self.columns[name].append(value)

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=SCHEMA)


def read_rows(
    item: InputFile, fields: FieldMap, fmt: str | None, encoding: str, rows: int
) -> Iterator[pa.Table]:
    """The records of one input file as Arrow blocks of ``rows`` rows; a bad record ends the
    file with a row that carries its error."""
    if item.seen and not os.path.isfile(item.path):
        raise TansakuError(
            f"the input {item.source} is not on node {socket.gethostname()}: on a cluster of several "
            "machines the inputs must be on storage every node mounts at the same path"
        )
    block, count = _Block(), 0
    try:
        for record in read_file(item.path, fields, fmt, encoding, source=item.source):
            block.add(item.number, count, record)
            count += 1
            if len(block) >= rows:
                yield block.table()
                block = _Block()
    except IngestError as exc:
        block.add(item.number, count, None, exc)
    if len(block):
        yield block.table()


def _error(row: dict[str, Any]) -> IngestError:
    """The IngestError a read task met, as the reader raised it (same message and fields)."""
    error = IngestError(row["error"])
    error.source, error.line, error.field = row["error_source"], row["error_line"], row["error_field"]
    return error


def check_rows(batches: Iterable[pa.Table]) -> int:
    """Raise the first bad record's error or duplicate id in input order; else the row count.

    ``batches`` are the rows' :data:`CHECKED` columns in input order.
    """
    last = (-1, -1)

    def records() -> Iterator[Record]:
        nonlocal last
        for batch in batches:
            for row in batch.to_pylist():
                place = (row["file"], row["pos"])
                if place <= last:  # never: the build keeps Ray Data's order (preserve_order)
                    raise RuntimeError(f"rows out of input order: {place} after {last}")
                last = place
                if row["error"] is not None:
                    raise _error(row)
                yield Record(row["id"], "", origin=row["origin"])

    return sum(1 for _ in unique_ids(records()))


def records_of(batches: Iterable[pa.Table]) -> Iterator[Record]:
    """The records of checked rows, in order."""
    last = (-1, -1)
    for batch in batches:
        names = ("file", "pos", "id", "title", "text", "metadata")
        for number, pos, doc_id, title, text, metadata in zip(
            *(batch.column(name).to_pylist() for name in names), strict=True
        ):
            if (number, pos) <= last:  # never: see check_rows
                raise RuntimeError(f"rows out of input order: {(number, pos)} after {last}")
            last = (number, pos)
            yield Record(doc_id, text, title, json.loads(metadata))


def texts_of(batch: pa.Table) -> list[str]:
    """What the analyzers and encoders see of each row: "title text" (empty for an error row)."""
    titles = batch.column("title").to_pylist()
    texts = batch.column("text").to_pylist()
    return [
        indexed_text(title, text) if text is not None else ""
        for title, text in zip(titles, texts, strict=True)
    ]


def input_files(paths: Iterable[str | os.PathLike[str]]) -> list[InputFile]:
    """The inputs as workers open them (absolute paths), named in errors as the user gave them."""
    return [
        InputFile(path=str(Path(p).absolute()), source=str(Path(p)), number=i, seen=Path(p).is_file())
        for i, p in enumerate(paths)
    ]

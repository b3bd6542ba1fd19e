"""A Ray Data datasource of tansaku input files: one read task per file, rows in input order."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from tansaku.index.records import FieldMap

from .rows import SCHEMA, InputFile, read_rows


class InputFiles(Datasource):  # type: ignore[misc]  # Ray's classes are untyped
    """JSONL/CSV/TSV files read and validated by tansaku's reader (see :mod:`.rows`).

    A file is read by one task, top to bottom (a CSV record may span lines, and every error
    names its line), so files are read in parallel, not parts of one file. The tasks run on
    any node: on a cluster of several machines the inputs must be on shared storage, as the
    index is (a node that does not see an input says so).
    """

    def __init__(
        self, files: Sequence[InputFile], fields: FieldMap, fmt: str | None, encoding: str, rows: int
    ) -> None:
        super().__init__()
        self.files = list(files)
        self.fields, self.fmt, self.encoding, self.rows = fields, fmt, encoding, rows

    def get_name(self) -> str:
        return "ReadTansakuInputs"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(_size(f.path) for f in self.files) or None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        return [
            ReadTask(
                functools.partial(read_rows, item, self.fields, self.fmt, self.encoding, self.rows),
                BlockMetadata(
                    num_rows=None, size_bytes=_size(item.path), input_files=(item.path,), exec_stats=None
                ),
                schema=SCHEMA,
            )
            for item in self.files
        ]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # a missing file is the read task's error to report, in order
        return 0

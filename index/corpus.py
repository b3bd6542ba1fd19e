"""The document store: one SQLite file with a ``docs`` table (sqlite-utils).

Reading and writing go through :mod:`sqlite3` directly; sqlite-utils (which loads pandas) is
imported only to create the table and for :attr:`Corpus.db`, so opening an index is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .atomic import disk_full
from .errors import damaged
from .records import Record, unique_ids

if TYPE_CHECKING:
    import sqlite_utils

TABLE = "docs"
_UPSERT = (
    f"INSERT INTO {TABLE} (id, title, text, metadata) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET title = excluded.title, text = excluded.text, "
    "metadata = excluded.metadata"
)
_MAX_PARAMS = 999  # SQLite's cap on bound parameters in builds before 3.32


@contextlib.contextmanager
def reading_corpus(path: Path) -> Iterator[None]:
    """SQLite's errors reading a damaged corpus file, as an IndexCorruptError naming it.

    A lock held by a writer is no damage: that error passes through.
    """
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            raise
        # the index directory: a shard's corpus lies in INDEX/shards/NNN/
        root = path.parent.parent.parent if path.parent.parent.name == "shards" else path.parent
        raise damaged(root, path.relative_to(root).as_posix(), f"cannot be read ({exc})") from exc


class Corpus:
    """Documents keyed by id: ``docs(id TEXT PRIMARY KEY, title, text, metadata JSON)``.

    Row order (SQLite rowid) is insertion order; an upsert of an existing id keeps
    its place.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.isolation_level = None  # explicit BEGIN/COMMIT: one transaction per ingest
        self.conn = conn
        self._db: sqlite_utils.Database | None = None
        if not readonly and not self._has_table():
            self.db[TABLE].create(  # type: ignore[union-attr]
                {"id": str, "title": str, "text": str, "metadata": str}, pk="id", not_null={"text"}
            )

    @property
    def db(self) -> sqlite_utils.Database:
        """The connection as a sqlite-utils ``Database`` (made on first use)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def _has_table(self) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.conn.execute(query, (TABLE,)).fetchone() is not None

    def __len__(self) -> int:
        with self._reading():
            return int(self.conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def _reading(self) -> contextlib.AbstractContextManager[None]:
        # an index's corpus (opened read-only) names itself when damaged
        return reading_corpus(self.path) if self.readonly else contextlib.nullcontext()

    def close(self) -> None:
        self.conn.close()

    def ingest(
        self,
        records: Iterable[Record],
        *,
        batch_size: int = 1000,
        progress: bool = True,
        total: int | None = None,
    ) -> int:
        """Upsert records by id in one transaction; any error rolls everything back.

        Returns the number of records written. Duplicate ids within ``records`` are
        an error (they are almost always a data mistake); ids already in the corpus
        are replaced.
        """
        conn = self.conn
        written = 0
        it = iter(tqdm(unique_ids(records), desc="ingest", unit="doc", total=total, disable=not progress))
        conn.execute("BEGIN IMMEDIATE")
        try:
            while batch := list(islice(it, batch_size)):
                conn.executemany(
                    _UPSERT,
                    [
                        (r.id, r.title, r.text, json.dumps(dict(r.metadata), ensure_ascii=False))
                        for r in batch
                    ],
                )
                written += len(batch)
        except BaseException:
            if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return written

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete documents by id in one transaction; returns the ids that were not there."""
        conn = self.conn
        missing = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for doc_id in ids:
                if conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (doc_id,)).rowcount == 0:
                    missing.append(doc_id)
        except BaseException:
            if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return missing

    def copy_rows(self, target: str | os.PathLike[str], *, after: int, count: int) -> int:
        """Copy the ``count`` documents after rowid ``after`` into a new corpus at ``target``.

        In SQLite, without holding them in memory (a build splits its corpus into shards this
        way). Returns the last rowid copied, where the next slice starts.
        """
        Corpus(target).close()  # the schema
        conn = self.conn
        conn.execute("ATTACH DATABASE ? AS part", (os.fspath(target),))
        try:
            conn.execute("BEGIN")
            conn.execute(
                f"INSERT INTO part.{TABLE} (id, title, text, metadata) SELECT id, title, text, metadata "
                f"FROM main.{TABLE} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, count),
            )
            last = conn.execute(
                f"SELECT max(rowid) FROM (SELECT rowid FROM main.{TABLE} "
                "WHERE rowid > ? ORDER BY rowid LIMIT ?)",
                (after, count),
            ).fetchone()[0]
            conn.execute("COMMIT")
        finally:
            conn.execute("DETACH DATABASE part")
        return int(last or after)

    def total_chars(self) -> int:
        """Characters of every title and text (what a build's memory grows with)."""
        row = self.conn.execute(f"SELECT sum(length(text)) + sum(length(title)) FROM {TABLE}").fetchone()
        return int(row[0] or 0)

    def iter_records(self) -> Iterator[Record]:
        """All records in rowid order."""
        with self._reading():
            cursor = self.conn.execute(f"SELECT id, title, text, metadata FROM {TABLE} ORDER BY rowid")
            for doc_id, title, text, metadata in cursor:
                yield Record(doc_id, text, title or "", json.loads(metadata or "{}"))

    def get_many(self, ids: Sequence[str]) -> dict[str, Record]:
        """Records by id (missing ids are left out)."""
        found: dict[str, Record] = {}
        # SQLite caps bound parameters (999 on old builds); chunk to stay under it.
        with self._reading():
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for doc_id, title, text, metadata in self.conn.execute(
                    f"SELECT id, title, text, metadata FROM {TABLE} WHERE id IN ({marks})", chunk
                ):
                    found[doc_id] = Record(doc_id, text, title or "", json.loads(metadata or "{}"))
        return found

    def rows(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None, str, str | None]]:
        """Raw ``(id, title, text, metadata JSON)`` rows by id (missing ids are left out).

        What hydration reads per search: one query for up to 999 ids, and no :class:`Record`
        per row.
        """
        found: dict[str, tuple[str, str | None, str, str | None]] = {}
        with self._reading():  # a damaged file is IndexCorruptError naming it
            for start in range(0, len(ids), _MAX_PARAMS):
                chunk = list(ids[start : start + _MAX_PARAMS])
                # Padded with a repeated id to a power of two, so a handful of statements serve
                # every length from sqlite3's statement cache instead of being parsed per search.
                size = max(8, 1 << (len(chunk) - 1).bit_length())
                chunk += chunk[:1] * (min(size, _MAX_PARAMS) - len(chunk))
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, title, text, metadata FROM {TABLE} WHERE id IN ({marks})"
                found.update((row[0], row) for row in self.conn.execute(sql, chunk))
        return found

    def get(self, doc_id: str) -> Record | None:
        return self.get_many([doc_id]).get(doc_id)

    def stats(self) -> dict[str, Any]:
        return {"docs": len(self)}


def copy_corpus(src: Path, dst: Path) -> None:
    """Copy a corpus file with SQLite's backup API (consistent even while it is read)."""
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source, sqlite3.connect(dst) as target:
        try:
            source.backup(target)
        except sqlite3.DatabaseError as exc:
            if disk_full(exc):  # the copy's disk, not the source: the caller says so
                raise
            with reading_corpus(src):
                raise
    source.close()
    target.close()

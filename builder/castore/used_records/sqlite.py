"""Used records as rows of an embedded SQLite table (``builder.castore.used_records``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from builder.castore.collection import USE_RECORD_INTERVAL
from builder.castore.sqlite_database import SqliteDatabase

# Rows listed per read (see SqliteDatabase.rows_in_pages).
_LIST_PAGE = 256


class SqliteUsedRecords:
    """Rows of ``table``: ``key`` (the primary key), ``data`` and ``last_used``.

    Table and column names are the caller's constants, never input.
    """

    def __init__(
        self,
        path: str | Path,
        table: str,
        key: str,
        data: str,
        what: str,
        clock: Callable[[], float],
    ) -> None:
        schema = (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            f"{key} BLOB PRIMARY KEY NOT NULL, {data} BLOB NOT NULL, last_used REAL NOT NULL"
            ") WITHOUT ROWID"
        )
        self._db = SqliteDatabase(path, schema, what)
        self._clock = clock
        self._db.ensure_column(table, "last_used", "REAL NOT NULL DEFAULT 0", clock())
        self._select = f"SELECT {data}, last_used FROM {table} WHERE {key} = ?"
        self._date = f"UPDATE {table} SET last_used = ? WHERE {key} = ?"
        self._insert = f"INSERT OR REPLACE INTO {table} ({key}, {data}, last_used) VALUES (?, ?, ?)"
        self._page = (
            f"SELECT {key}, {data}, last_used FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?"
        )
        self._delete = f"DELETE FROM {table} WHERE {key} = ? AND last_used <= ?"

    @property
    def path(self) -> str:
        return self._db.path

    def get(self, key: bytes) -> bytes | None:
        with self._db.reading() as conn:
            row = conn.execute(self._select, (key,)).fetchone()
        if row is None:
            return None
        now = self._clock()
        if now - row[1] >= USE_RECORD_INTERVAL:
            with self._db.writing() as conn:
                conn.execute(self._date, (now, key))
        return bytes(row[0])

    def put(self, key: bytes, data: bytes) -> None:
        with self._db.writing() as conn:
            conn.execute(self._insert, (key, data, self._clock()))

    def records(self) -> Iterator[tuple[bytes, bytes, float]]:
        yield from self._db.rows_in_pages(self._page, _LIST_PAGE)

    def evict(self, key: bytes, last_used: float) -> bool:
        with self._db.writing() as conn:
            deleted = conn.execute(self._delete, (key, last_used)).rowcount
        return deleted > 0

    def close(self) -> None:
        self._db.close()

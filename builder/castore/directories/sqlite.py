"""Directories in an embedded SQLite database: the default store.

A closure is committed in one transaction, so it is stored whole or not at
all; the database's threading, durability and full-disk rules are those of
``builder.castore.sqlite_database``. The removal epoch is a row of the same
database, advanced in the transaction that deletes, so every process sharing
the database sees it move exactly when the directory goes.

Each row carries when it was stored or last put again (``stored_at``, added
to a database made before, with the time of that upgrade), for collection by
age.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from builder.castore.collection import StoredObject
from builder.castore.composition import Backend, Params, url_path
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting, dated_closure
from builder.castore.directory import Directory
from builder.castore.sqlite_database import SqliteDatabase
from builder.castore.wire import decode_directory

_SCHEMA = """
CREATE TABLE IF NOT EXISTS directories (
    digest BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL,
    stored_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removal_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    epoch INTEGER NOT NULL
);
"""

# Rows listed per read (see SqliteDatabase.rows_in_pages).
_LIST_PAGE = 1024


class SqliteDirectoryService(ClosureCommitting):
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts, for collection by age."""
        self._db = SqliteDatabase(path, _SCHEMA, "directory database")
        self._clock = clock
        self._db.ensure_column("directories", "stored_at", "REAL NOT NULL DEFAULT 0", clock())

    def get(self, digest: Digest) -> Directory | None:
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT data FROM directories WHERE digest = ?", (bytes(digest),)
            ).fetchone()
        return None if row is None else decode_directory(row[0])

    def _commit(self, directories: list[Directory], named: list[Digest]) -> None:
        now = self._clock()
        with self._db.writing() as conn:

            def date(digest: Digest) -> Directory | None:
                row = conn.execute(
                    "UPDATE directories SET stored_at = ? WHERE digest = ? RETURNING data",
                    (now, bytes(digest)),
                ).fetchone()
                return None if row is None else decode_directory(row[0])

            dated_closure(date, named)
            conn.executemany(
                "INSERT INTO directories (digest, data, stored_at) VALUES (?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET stored_at = excluded.stored_at",
                [(bytes(d.digest), d.encoded, now) for d in directories],
            )

    def remove(self, digest: Digest) -> bool:
        with self._db.writing() as conn:
            removed = (
                conn.execute("DELETE FROM directories WHERE digest = ?", (bytes(digest),)).rowcount
                > 0
            )
            if removed:
                conn.execute(
                    "INSERT INTO removal_epoch (id, epoch) VALUES (0, 1) "
                    "ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1"
                )
        return removed

    def stored(self) -> Iterator[StoredObject]:
        query = (
            "SELECT digest, length(data), stored_at FROM directories "
            "WHERE digest > ? ORDER BY digest LIMIT ?"
        )
        for digest, size, stored_at in self._db.rows_in_pages(query, _LIST_PAGE):
            yield StoredObject(Digest(digest), size, stored_at)

    def remove_orphans(self, before: float) -> int:
        """Nothing is kept beside the objects."""
        return 0

    def remove_untouched(self, digests: Sequence[Digest], before: float) -> list[StoredObject]:
        removed = []
        with self._db.writing() as conn:
            for digest in digests:
                row = conn.execute(
                    "DELETE FROM directories WHERE digest = ? AND stored_at < ? "
                    "RETURNING length(data), stored_at",
                    (bytes(digest), before),
                ).fetchone()
                if row is not None:
                    removed.append(StoredObject(digest, row[0], row[1]))
            if removed:
                conn.execute(
                    "INSERT INTO removal_epoch (id, epoch) VALUES (0, 1) "
                    "ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1"
                )
        return removed

    def removal_epoch(self) -> int:
        with self._db.reading() as conn:
            row = conn.execute("SELECT epoch FROM removal_epoch").fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        self._db.close()


def _build(params: Params) -> SqliteDirectoryService:
    return SqliteDirectoryService(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("directory", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

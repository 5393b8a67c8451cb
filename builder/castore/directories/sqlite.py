"""Directories in an embedded SQLite database: the default store.

A closure is committed in one transaction, so it is stored whole or not at
all; the database's threading, durability and full-disk rules are those of
``builder.castore.sqlite_database``. The removal epoch is a row of the same
database, advanced in the transaction that deletes, so every process sharing
the database sees it move exactly when the directory goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.castore.composition import Backend, Params, url_path
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting
from builder.castore.directory import Directory
from builder.castore.sqlite_database import SqliteDatabase
from builder.castore.wire import decode_directory

_SCHEMA = """
CREATE TABLE IF NOT EXISTS directories (
    digest BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS removal_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    epoch INTEGER NOT NULL
);
"""


class SqliteDirectoryService(ClosureCommitting):
    def __init__(self, path: str | Path) -> None:
        self._db = SqliteDatabase(path, _SCHEMA, "directory database")

    def get(self, digest: Digest) -> Directory | None:
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT data FROM directories WHERE digest = ?", (bytes(digest),)
            ).fetchone()
        return None if row is None else decode_directory(row[0])

    def _commit(self, directories: list[Directory]) -> None:
        with self._db.writing() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)",
                [(bytes(d.digest), d.encoded) for d in directories],
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

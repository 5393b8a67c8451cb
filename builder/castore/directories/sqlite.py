"""Directories in an embedded SQLite database: the default store.

A closure is committed in one transaction, so it is stored whole or not at
all; the database's threading, durability and full-disk rules are those of
``builder.castore.sqlite_database``.
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
) WITHOUT ROWID
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

    def close(self) -> None:
        self._db.close()


def _build(params: Params) -> SqliteDirectoryService:
    return SqliteDirectoryService(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("directory", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

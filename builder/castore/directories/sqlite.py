"""Directories in an embedded SQLite database: the default store.

Each thread gets its own connection (SQLite connections are not shareable
across threads without serialising every read); WAL mode lets readers proceed
while a closure is being committed in one transaction. ``synchronous=FULL``
flushes the log at every commit, so a closure reported as stored survives a
power loss (NORMAL in WAL mode may lose the last commits). A full disk rolls
the transaction back and is reported as the database being full.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from builder.castore.composition import Backend, Params, url_path
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting
from builder.castore.directory import Directory
from builder.castore.wire import decode_directory
from builder.errors import ResourceExhaustedError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS directories (
    digest BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID
"""


class SqliteDirectoryService(ClosureCommitting):
    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        else:
            self._path = f"file:castore-{id(self)}?mode=memory&cache=shared"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Held open so that a shared in-memory database outlives idle threads.
        self._keeper = self._connection()
        with self._keeper:
            self._keeper.execute(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                uri=self._path.startswith("file:"),
                check_same_thread=False,
                timeout=30,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, digest: Digest) -> Directory | None:
        row = (
            self._connection()
            .execute("SELECT data FROM directories WHERE digest = ?", (bytes(digest),))
            .fetchone()
        )
        return None if row is None else decode_directory(row[0])

    def _commit(self, directories: list[Directory]) -> None:
        conn = self._connection()
        try:
            with conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)",
                    [(bytes(d.digest), d.encoded) for d in directories],
                )
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise ResourceExhaustedError(
                f"directory database {self._path} is out of space: {exc}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _build(params: Params) -> SqliteDirectoryService:
    return SqliteDirectoryService(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("directory", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

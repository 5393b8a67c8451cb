"""PathInfos in an embedded SQLite database: the default in the data directory.

Each thread gets its own connection, and WAL mode lets readers carry on while
another thread or process writes; the busy timeout makes several processes
sharing one file queue their writes instead of failing. ``synchronous=FULL``
flushes the log at every commit, so a path reported as recorded survives a
power loss. Records are the deterministic tvix encoding of the PathInfo.

A database in memory is one shared-cache database, whose table locks fail at
once instead of waiting; its statements are serialised instead.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from builder.castore.composition import Backend, Params, url_path
from builder.errors import IntegrityError, ResourceExhaustedError
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest
from builder.store.wire import decode_path_info, encode_path_info

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pathinfos (
    digest BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID
"""

# Rows fetched per query while listing: each page is a fresh query on the
# calling thread's connection, so a slow consumer holds no read transaction.
_LIST_PAGE = 256


class SqlitePathInfoService:
    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._serial: AbstractContextManager[object] = nullcontext()
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        else:
            self._path = f"file:pathinfo-{id(self)}?mode=memory&cache=shared"
            self._serial = threading.Lock()
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

    def get(self, digest: bytes) -> PathInfo | None:
        check_digest(digest)
        with self._serial:
            row = (
                self._connection()
                .execute("SELECT data FROM pathinfos WHERE digest = ?", (digest,))
                .fetchone()
            )
        return None if row is None else self._decode(digest, row[0])

    def _decode(self, digest: bytes, data: bytes) -> PathInfo:
        info = decode_path_info(data, f"{self._path}: path info {digest.hex()}")
        if info.path.digest != digest:
            raise IntegrityError(
                f"{self._path}: the record under {digest.hex()} describes {info.path}"
            )
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        conn = self._connection()
        try:
            with self._serial, conn:
                conn.execute(
                    "INSERT OR REPLACE INTO pathinfos (digest, data) VALUES (?, ?)",
                    (info.path.digest, encode_path_info(info)),
                )
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise ResourceExhaustedError(
                f"path info database {self._path} is out of space: {exc}"
            ) from exc
        return info

    def list(self) -> Iterator[PathInfo]:
        after = b""
        while True:
            with self._serial:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT digest, data FROM pathinfos WHERE digest > ?"
                        " ORDER BY digest LIMIT ?",
                        (after, _LIST_PAGE),
                    )
                    .fetchall()
                )
            for digest, data in rows:
                yield self._decode(digest, data)
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _build(params: Params) -> SqlitePathInfoService:
    return SqlitePathInfoService(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("pathinfo", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

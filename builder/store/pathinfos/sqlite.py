"""PathInfos in an embedded SQLite database: the default in the data directory.

Records are the deterministic tvix encoding of the PathInfo, keyed by the
path's digest; the database's threading, durability and full-disk rules are
those of ``builder.castore.sqlite_database``, so several processes (one per
offloaded derivation) share one file safely.

Records are roots for garbage collection (``builder.castore.collection``) and
carry when they were last put or read (``last_used``; an older database gains
the column, dated at the upgrade).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from builder.castore.collection import USE_RECORD_INTERVAL, UsedRoot
from builder.castore.composition import Backend, Params, url_path
from builder.castore.sqlite_database import SqliteDatabase
from builder.errors import IntegrityError
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest
from builder.store.wire import decode_path_info, encode_path_info

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pathinfos (
    digest BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL,
    last_used REAL NOT NULL
) WITHOUT ROWID
"""

# Rows fetched per query while listing: each page is a fresh query on the
# calling thread's connection, so a slow consumer holds no read transaction.
_LIST_PAGE = 256


class SqlitePathInfoService:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._db = SqliteDatabase(path, _SCHEMA, "path info database")
        self._clock = clock
        self._db.ensure_column("pathinfos", "last_used", "REAL NOT NULL DEFAULT 0", clock())

    def get(self, digest: bytes) -> PathInfo | None:
        check_digest(digest)
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT data, last_used FROM pathinfos WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            return None
        now = self._clock()
        if now - row[1] >= USE_RECORD_INTERVAL:
            with self._db.writing() as conn:
                conn.execute("UPDATE pathinfos SET last_used = ? WHERE digest = ?", (now, digest))
        return self._decode(digest, row[0])

    def _decode(self, digest: bytes, data: bytes) -> PathInfo:
        info = decode_path_info(data, f"{self._db.path}: path info {digest.hex()}")
        if info.path.digest != digest:
            raise IntegrityError(
                f"{self._db.path}: the record under {digest.hex()} describes {info.path}"
            )
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        with self._db.writing() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO pathinfos (digest, data, last_used) VALUES (?, ?, ?)",
                (info.path.digest, encode_path_info(info), self._clock()),
            )
        return info

    def list(self) -> Iterator[PathInfo]:
        after = b""
        while True:
            with self._db.reading() as conn:
                rows = conn.execute(
                    "SELECT digest, data FROM pathinfos WHERE digest > ? ORDER BY digest LIMIT ?",
                    (after, _LIST_PAGE),
                ).fetchall()
            for digest, data in rows:
                yield self._decode(digest, data)
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def used_roots(self) -> Iterator[UsedRoot]:
        after = b""
        while True:
            with self._db.reading() as conn:
                rows = conn.execute(
                    "SELECT digest, data, last_used FROM pathinfos WHERE digest > ? "
                    "ORDER BY digest LIMIT ?",
                    (after, _LIST_PAGE),
                ).fetchall()
            for digest, data, last_used in rows:
                yield UsedRoot(digest, (self._decode(digest, data).node,), last_used)
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def evict(self, root: UsedRoot) -> bool:
        with self._db.writing() as conn:
            deleted = conn.execute(
                "DELETE FROM pathinfos WHERE digest = ? AND last_used <= ?",
                (root.key, root.last_used),
            ).rowcount
        return deleted > 0

    def close(self) -> None:
        self._db.close()


def _build(params: Params) -> SqlitePathInfoService:
    return SqlitePathInfoService(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("pathinfo", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

"""Results in an embedded SQLite database: the default, in the embedded store's layout.

The table is the one the build service kept in its work directory before
result caches composed, at the same place in the default layout, so existing
entries keep answering; a database made before last use was recorded gains
the column, dated at the upgrade.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from builder.castore.collection import USE_RECORD_INTERVAL, UsedRoot
from builder.castore.composition import Backend, Params, url_path
from builder.castore.sqlite_database import SqliteDatabase
from builder.proto.tvix.build.protos import build_pb2
from builder.store.results.service import check_key, decode_result, encode_result, result_nodes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    request BLOB PRIMARY KEY NOT NULL,
    build BLOB NOT NULL,
    last_used REAL NOT NULL
) WITHOUT ROWID
"""

# Entries listed per query, so that a collector's walk holds no read transaction.
_LIST_PAGE = 256


class SqliteResultCache:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._db = SqliteDatabase(path, _SCHEMA, "result cache database")
        self._clock = clock
        self._db.ensure_column("results", "last_used", "REAL NOT NULL DEFAULT 0", clock())

    def _where(self, key: bytes) -> str:
        return f"{self._db.path}: result {key.hex()}"

    def get(self, key: bytes) -> build_pb2.Build | None:
        check_key(key)
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT build, last_used FROM results WHERE request = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        build = decode_result(row[0], self._where(key))
        now = self._clock()
        if now - row[1] >= USE_RECORD_INTERVAL:
            with self._db.writing() as conn:
                conn.execute("UPDATE results SET last_used = ? WHERE request = ?", (now, key))
        return build

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        data = encode_result(build)
        with self._db.writing() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO results (request, build, last_used) VALUES (?, ?, ?)",
                (check_key(key), data, self._clock()),
            )

    def used_roots(self) -> Iterator[UsedRoot]:
        after = b""
        while True:
            with self._db.reading() as conn:
                rows = conn.execute(
                    "SELECT request, build, last_used FROM results WHERE request > ? "
                    "ORDER BY request LIMIT ?",
                    (after, _LIST_PAGE),
                ).fetchall()
            for key, data, last_used in rows:
                nodes = result_nodes(decode_result(data, self._where(key)), self._where(key))
                yield UsedRoot(key, nodes, last_used)
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def evict(self, root: UsedRoot) -> bool:
        with self._db.writing() as conn:
            deleted = conn.execute(
                "DELETE FROM results WHERE request = ? AND last_used <= ?",
                (root.key, root.last_used),
            ).rowcount
        return deleted > 0

    def close(self) -> None:
        self._db.close()


def _build(params: Params) -> SqliteResultCache:
    return SqliteResultCache(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("resultcache", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

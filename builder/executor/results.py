"""The result cache: finished builds recorded under the digest of their request.

Both families encode a BuildRequest identically, so the digest of its
deterministic encoding identifies the request whichever family sent it. A
recorded result is only served while every output it names is still complete
in the store; otherwise the request simply runs again.

Entries are roots for garbage collection (``builder.castore.collection``): each
keeps its outputs alive and records when it was last recorded or looked up, so
that a collector bounding the store drops the least recently used first. An
older table gains that column, dated at the upgrade.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from builder.castore.collection import USE_RECORD_INTERVAL, UsedRoot
from builder.castore.digest import Digest
from builder.castore.wire import Family, node_from_proto
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest, request_to_proto, tvix_response
from builder.proto.tvix.build.protos import build_pb2


def request_digest(request: BuildRequest) -> Digest:
    return Digest.of(request_to_proto(request, Family.TVIX).SerializeToString(deterministic=True))


# Entries listed per query, so that a collector's walk holds no read transaction.
_LIST_PAGE = 256


class ResultCache:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates records and look-ups, for eviction by last use."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        self._clock = clock
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS results (request BLOB PRIMARY KEY NOT NULL, "
                "build BLOB NOT NULL, last_used REAL NOT NULL) WITHOUT ROWID"
            )
        with self._lock:
            if "last_used" not in self._columns():
                self._add_last_used(clock())

    def _columns(self) -> set[str]:
        return {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}

    def _add_last_used(self, now: float) -> None:
        """Date the entries of a table made before last use was recorded at the upgrade."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if "last_used" not in self._columns():
                self._conn.execute(
                    "ALTER TABLE results ADD COLUMN last_used REAL NOT NULL DEFAULT 0"
                )
                self._conn.execute("UPDATE results SET last_used = ?", (now,))
        except BaseException:
            self._conn.rollback()
            raise
        self._conn.commit()

    def record(self, request: BuildRequest, outputs: list[CollectedOutput]) -> None:
        build = tvix_response(None, outputs)
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO results (request, build, last_used) VALUES (?, ?, ?)",
                (
                    bytes(request_digest(request)),
                    build.SerializeToString(deterministic=True),
                    self._clock(),
                ),
            )

    def lookup(self, request: BuildRequest) -> list[CollectedOutput] | None:
        key = bytes(request_digest(request))
        with self._lock:
            row = self._conn.execute(
                "SELECT build, last_used FROM results WHERE request = ?", (key,)
            ).fetchone()
            now = self._clock()
            if row is not None and now - row[1] >= USE_RECORD_INTERVAL:
                with self._conn:
                    self._conn.execute(
                        "UPDATE results SET last_used = ? WHERE request = ?", (now, key)
                    )
        if row is None:
            return None
        build = build_pb2.Build.FromString(row[0])
        if len(build.outputs) != len(request.outputs):
            return None
        return [
            CollectedOutput(path, node_from_proto(node), tuple(needles.needles))
            for path, node, needles in zip(
                request.outputs, build.outputs, build.outputs_needles, strict=True
            )
        ]

    def used_roots(self) -> Iterator[UsedRoot]:
        after = b""
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT request, build, last_used FROM results WHERE request > ? "
                    "ORDER BY request LIMIT ?",
                    (after, _LIST_PAGE),
                ).fetchall()
            for key, data, last_used in rows:
                build = build_pb2.Build.FromString(data)
                nodes = tuple(node_from_proto(node) for node in build.outputs)
                yield UsedRoot(key, nodes, last_used)
            if len(rows) < _LIST_PAGE:
                return
            after = rows[-1][0]

    def evict(self, root: UsedRoot) -> bool:
        with self._lock, self._conn:
            return (
                self._conn.execute(
                    "DELETE FROM results WHERE request = ? AND last_used <= ?",
                    (root.key, root.last_used),
                ).rowcount
                > 0
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

"""The result cache: finished builds recorded under the digest of their request.

Both families encode a BuildRequest identically, so the digest of its
deterministic encoding identifies the request whichever family sent it. A
recorded result is only served while every output it names is still complete
in the store; otherwise the request simply runs again.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from builder.castore.digest import Digest
from builder.castore.wire import Family, node_from_proto
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest, request_to_proto, tvix_response
from builder.proto.tvix.build.protos import build_pb2


def request_digest(request: BuildRequest) -> Digest:
    return Digest.of(request_to_proto(request, Family.TVIX).SerializeToString(deterministic=True))


class ResultCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS results ("
                "request BLOB PRIMARY KEY NOT NULL, build BLOB NOT NULL) WITHOUT ROWID"
            )

    def record(self, request: BuildRequest, outputs: list[CollectedOutput]) -> None:
        build = tvix_response(None, outputs)
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO results (request, build) VALUES (?, ?)",
                (bytes(request_digest(request)), build.SerializeToString(deterministic=True)),
            )

    def lookup(self, request: BuildRequest) -> list[CollectedOutput] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT build FROM results WHERE request = ?", (bytes(request_digest(request)),)
            ).fetchone()
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

    def close(self) -> None:
        with self._lock:
            self._conn.close()

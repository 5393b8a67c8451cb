"""What is known about a store path once its contents are in the castore.

The registry remembers, per store path, its root node and the facts Nix
keeps for it (NAR hash and size, references, deriver), so a path is ingested
from the Nix store or built at most once per data directory.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from builder.castore.nodes import Node
from builder.castore.wire import node_from_proto, node_to_proto
from builder.nix.store_path import StorePath
from builder.proto.tvix.castore.protos import castore_pb2


@dataclass(frozen=True)
class PathInfo:
    path: StorePath
    node: Node
    nar_sha256: bytes
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None = None


class PathRegistry:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(db_path), check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS nix_paths (path TEXT PRIMARY KEY, node BLOB NOT NULL,"
                " nar_sha256 BLOB NOT NULL, nar_size INTEGER NOT NULL,"
                " refs TEXT NOT NULL, deriver TEXT)"
            )

    def get(self, path: StorePath) -> PathInfo | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT node, nar_sha256, nar_size, refs, deriver FROM nix_paths WHERE path = ?",
                (str(path),),
            ).fetchone()
        if row is None:
            return None
        node_bytes, nar_sha256, nar_size, refs, deriver = row
        message = castore_pb2.Node.FromString(node_bytes)
        return PathInfo(
            path,
            node_from_proto(message, str(path)),
            nar_sha256,
            nar_size,
            tuple(StorePath.parse(r) for r in json.loads(refs)),
            StorePath.parse(deriver) if deriver else None,
        )

    def put(self, info: PathInfo) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO nix_paths VALUES (?, ?, ?, ?, ?, ?)",
                (
                    str(info.path),
                    node_to_proto(info.node).SerializeToString(deterministic=True),
                    info.nar_sha256,
                    info.nar_size,
                    json.dumps([str(r) for r in info.references]),
                    str(info.deriver) if info.deriver else None,
                ),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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

from builder.castore.collection import UsedRoot
from builder.castore.composition import Backend, Params, url_path
from builder.castore.used_records.sqlite import SqliteUsedRecords
from builder.errors import IntegrityError
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest
from builder.store.wire import decode_path_info, encode_path_info


class SqlitePathInfoService:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._records = SqliteUsedRecords(
            path, "pathinfos", "digest", "data", "path info database", clock
        )

    def get(self, digest: bytes) -> PathInfo | None:
        data = self._records.get(check_digest(digest))
        return None if data is None else self._decode(digest, data)

    def _decode(self, digest: bytes, data: bytes) -> PathInfo:
        where = self._records.path
        info = decode_path_info(data, f"{where}: path info {digest.hex()}")
        if info.path.digest != digest:
            raise IntegrityError(f"{where}: the record under {digest.hex()} describes {info.path}")
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        self._records.put(info.path.digest, encode_path_info(info))
        return info

    def list(self) -> Iterator[PathInfo]:
        for digest, data, _ in self._records.records():
            yield self._decode(digest, data)

    def used_roots(self) -> Iterator[UsedRoot]:
        for digest, data, last_used in self._records.records():
            yield UsedRoot(digest, (self._decode(digest, data).node,), last_used)

    def evict(self, root: UsedRoot) -> bool:
        return self._records.evict(root.key, root.last_used)

    def close(self) -> None:
        self._records.close()


def _build(params: Params) -> SqlitePathInfoService:
    return SqlitePathInfoService(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("pathinfo", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

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

from builder.castore.collection import UsedRoot
from builder.castore.composition import Backend, Params, url_path
from builder.castore.used_records.sqlite import SqliteUsedRecords
from builder.proto.tvix.build.protos import build_pb2
from builder.store.results.service import check_key, decode_result, encode_result, result_nodes


class SqliteResultCache:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._records = SqliteUsedRecords(
            path, "results", "request", "build", "result cache database", clock
        )

    def _where(self, key: bytes) -> str:
        return f"{self._records.path}: result {key.hex()}"

    def get(self, key: bytes) -> build_pb2.Build | None:
        data = self._records.get(check_key(key))
        return None if data is None else decode_result(data, self._where(key))

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        data = encode_result(build)
        self._records.put(check_key(key), data)

    def used_roots(self) -> Iterator[UsedRoot]:
        for key, data, last_used in self._records.records():
            where = self._where(key)
            yield UsedRoot(key, result_nodes(decode_result(data, where), where), last_used)

    def evict(self, root: UsedRoot) -> bool:
        return self._records.evict(root.key, root.last_used)

    def close(self) -> None:
        self._records.close()


def _build(params: Params) -> SqliteResultCache:
    return SqliteResultCache(params.string("path"))


def _from_url(url: str) -> dict[str, Any]:
    """``sqlite://`` alone is a database in memory."""
    return {"path": url_path(url) if url != "sqlite://" else ":memory:"}


BACKEND = Backend("resultcache", "sqlite", _build, schemes=("sqlite",), from_url=_from_url)

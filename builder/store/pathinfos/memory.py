"""PathInfos in a dict: for tests and short-lived stores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from builder.castore.collection import UsedRoot
from builder.castore.composition import Backend
from builder.castore.used_records.memory import MemoryUsedRecords
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest


class MemoryPathInfoService:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._records: MemoryUsedRecords[PathInfo] = MemoryUsedRecords(clock)

    def get(self, digest: bytes) -> PathInfo | None:
        return self._records.get(check_digest(digest))

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        self._records.put(info.path.digest, info)
        return info

    def used_roots(self) -> Iterator[UsedRoot]:
        records = self._records.records()
        return iter([UsedRoot(key, (info.node,), used) for key, info, used in records])

    def evict(self, root: UsedRoot) -> bool:
        return self._records.evict(root.key, root.last_used)

    def list(self) -> Iterator[PathInfo]:
        """A snapshot, so that puts while a caller iterates neither fail nor show half-way."""
        return iter([info for _, info, _ in self._records.records()])

    def close(self) -> None:
        self._records.close()


BACKEND = Backend("pathinfo", "memory", lambda params: MemoryPathInfoService(), schemes=("memory",))

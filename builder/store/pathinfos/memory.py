"""PathInfos in a dict: for tests and short-lived stores."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from builder.castore.collection import USE_RECORD_INTERVAL, UsedRoot
from builder.castore.composition import Backend
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest


class MemoryPathInfoService:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._infos: dict[bytes, PathInfo] = {}
        self._used: dict[bytes, float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> PathInfo | None:
        check_digest(digest)
        with self._lock:
            info = self._infos.get(digest)
            if info is not None:
                now = self._clock()
                if now - self._used[digest] >= USE_RECORD_INTERVAL:
                    self._used[digest] = now
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        with self._lock:
            self._infos[info.path.digest] = info
            self._used[info.path.digest] = self._clock()
        return info

    def used_roots(self) -> Iterator[UsedRoot]:
        with self._lock:
            roots = [
                UsedRoot(digest, (info.node,), self._used[digest])
                for digest, info in self._infos.items()
            ]
        return iter(roots)

    def evict(self, root: UsedRoot) -> bool:
        with self._lock:
            if self._used.get(root.key, float("inf")) > root.last_used:
                return False
            del self._infos[root.key], self._used[root.key]
        return True

    def list(self) -> Iterator[PathInfo]:
        """A snapshot, so that puts while a caller iterates neither fail nor show half-way."""
        with self._lock:
            infos = list(self._infos.values())
        return iter(infos)

    def close(self) -> None:
        with self._lock:
            self._infos.clear()
            self._used.clear()


BACKEND = Backend("pathinfo", "memory", lambda params: MemoryPathInfoService(), schemes=("memory",))

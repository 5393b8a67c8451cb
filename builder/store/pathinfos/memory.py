"""PathInfos in a dict: for tests and short-lived stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from builder.castore.composition import Backend
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest


class MemoryPathInfoService:
    def __init__(self) -> None:
        self._infos: dict[bytes, PathInfo] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> PathInfo | None:
        return self._infos.get(check_digest(digest))

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        with self._lock:
            self._infos[info.path.digest] = info
        return info

    def list(self) -> Iterator[PathInfo]:
        """A snapshot, so that puts while a caller iterates neither fail nor show half-way."""
        with self._lock:
            infos = list(self._infos.values())
        return iter(infos)

    def close(self) -> None:
        with self._lock:
            self._infos.clear()


BACKEND = Backend("pathinfo", "memory", lambda params: MemoryPathInfoService(), schemes=("memory",))

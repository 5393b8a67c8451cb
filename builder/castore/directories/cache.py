"""A near/far pair: reads try the near service and fill it from the far one."""

from __future__ import annotations

from collections.abc import Iterator

from builder.castore.composition import Backend, Params
from builder.castore.copying import copy_missing_directories
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import fetch_closure
from builder.castore.hit_counts import HitCounts
from builder.errors import NotFoundError


class CacheDirectoryService(ClosureCommitting):
    def __init__(self, near: DirectoryService, far: DirectoryService) -> None:
        self.near = near
        self.far = far
        self.near_counts = HitCounts()

    def get(self, digest: Digest) -> Directory | None:
        found = self.near.get(digest)
        self.near_counts.count(found is not None)
        if found is not None:
            return found
        found = self.far.get(digest)
        if found is None:
            return None
        # The whole closure is fetched so the near copy satisfies the
        # "children stored first" rule and later recursive reads stay near.
        self._fill_near(digest)
        return found

    def _fill_near(self, root: Digest) -> None:
        copy_missing_directories(root, fetch_closure(root, self.far), self.near)

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        if self.get(digest) is None:
            raise NotFoundError(f"directory {digest} not found")
        return self.near.get_recursive(digest)

    def _commit(self, directories: list[Directory], named: list[Digest]) -> None:
        """Each service's own put dates what the closure names in that service."""
        for service in (self.far, self.near):
            putter = service.put_multiple_start()
            for directory in directories:
                putter.put(directory)
            putter.close()

    def close(self) -> None:
        self.near.close()
        self.far.close()


def _build(params: Params) -> CacheDirectoryService:
    return CacheDirectoryService(params.directory("near"), params.directory("far"))


BACKEND = Backend("directory", "cache", _build)

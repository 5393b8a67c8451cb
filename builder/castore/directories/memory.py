"""Directories in a dict: for tests and as a fast near cache."""

from __future__ import annotations

import threading

from builder.castore.composition import Backend
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting
from builder.castore.directory import Directory


class MemoryDirectoryService(ClosureCommitting):
    def __init__(self) -> None:
        self._directories: dict[Digest, Directory] = {}
        self._lock = threading.Lock()
        self._removals = 0

    def get(self, digest: Digest) -> Directory | None:
        return self._directories.get(digest)

    def _commit(self, directories: list[Directory]) -> None:
        with self._lock:
            for directory in directories:
                self._directories[directory.digest] = directory

    def remove(self, digest: Digest) -> bool:
        with self._lock:
            removed = self._directories.pop(digest, None) is not None
            if removed:
                self._removals += 1
        return removed

    def removal_epoch(self) -> int:
        return self._removals

    def close(self) -> None:
        self._directories.clear()


BACKEND = Backend(
    "directory", "memory", lambda params: MemoryDirectoryService(), schemes=("memory",)
)

"""Directories in a dict: for tests and as a fast near cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from builder.castore.digest import Digest
from builder.castore.directories.closure import ValidatingPutter, walk_breadth_first
from builder.castore.directory import Directory


class MemoryDirectoryService:
    def __init__(self) -> None:
        self._directories: dict[Digest, Directory] = {}
        self._lock = threading.Lock()

    def get(self, digest: Digest) -> Directory | None:
        return self._directories.get(digest)

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        return walk_breadth_first(self.get, digest)

    def put(self, directory: Directory) -> Digest:
        putter = self.put_multiple_start()
        putter.put(directory)
        return putter.close()

    def put_multiple_start(self) -> ValidatingPutter:
        return ValidatingPutter(self.get, self._commit)

    def _commit(self, directories: list[Directory]) -> None:
        with self._lock:
            for directory in directories:
                self._directories[directory.digest] = directory

    def close(self) -> None:
        self._directories.clear()

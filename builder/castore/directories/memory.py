"""Directories in a dict: for tests and as a fast near cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from builder.castore.collection import StoredObject
from builder.castore.composition import Backend
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting, dated_closure
from builder.castore.directory import Directory


class MemoryDirectoryService(ClosureCommitting):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts, for collection by age."""
        self._directories: dict[Digest, Directory] = {}
        self._touched: dict[Digest, float] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._removals = 0

    def get(self, digest: Digest) -> Directory | None:
        return self._directories.get(digest)

    def _commit(self, directories: list[Directory], named: list[Digest]) -> None:
        with self._lock:
            now = self._clock()

            def date(digest: Digest) -> Directory | None:
                found = self._directories.get(digest)
                if found is not None:
                    self._touched[digest] = now
                return found

            dated_closure(date, named)
            for directory in directories:
                self._directories[directory.digest] = directory
                self._touched[directory.digest] = now

    def remove(self, digest: Digest) -> bool:
        with self._lock:
            removed = self._directories.pop(digest, None) is not None
            self._touched.pop(digest, None)
            if removed:
                self._removals += 1
        return removed

    def stored(self) -> Iterator[StoredObject]:
        with self._lock:
            objects = [
                StoredObject(digest, len(directory.encoded), self._touched[digest])
                for digest, directory in self._directories.items()
            ]
        return iter(objects)

    def remove_orphans(self, before: float) -> int:
        """Nothing is kept beside the objects."""
        return 0

    def remove_untouched(self, digests: Sequence[Digest], before: float) -> list[StoredObject]:
        removed = []
        with self._lock:
            for digest in digests:
                touched = self._touched.get(digest)
                if touched is None or touched >= before:
                    continue
                directory = self._directories.pop(digest)
                del self._touched[digest]
                removed.append(StoredObject(digest, len(directory.encoded), touched))
            if removed:
                self._removals += 1
        return removed

    def removal_epoch(self) -> int:
        return self._removals

    def close(self) -> None:
        self._directories.clear()
        self._touched.clear()


BACKEND = Backend(
    "directory", "memory", lambda params: MemoryDirectoryService(), schemes=("memory",)
)

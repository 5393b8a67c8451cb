"""Blobs in a dict: for tests and as a near cache for small stores."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from builder.castore.blobs.service import ChunkMeta
from builder.castore.blobs.writer import HashingBlobWriter
from builder.castore.collection import StoredObject
from builder.castore.composition import Backend
from builder.castore.digest import Digest


class _MemoryWriter(HashingBlobWriter):
    def __init__(self, service: MemoryBlobService) -> None:
        super().__init__()
        self._service = service
        self._buffer = io.BytesIO()

    def _keep(self, data: memoryview) -> None:
        self._buffer.write(data)

    def _commit(self, digest: Digest) -> None:
        self._service._store(digest, self._buffer.getvalue())

    def _discard(self) -> None:
        self._buffer = io.BytesIO()


class MemoryBlobService:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts, for collection by age."""
        self._blobs: dict[Digest, bytes] = {}
        self._touched: dict[Digest, float] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._removals = 0

    def _store(self, digest: Digest, data: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, data)
            self._touched[digest] = self._clock()

    def has(self, digest: Digest) -> bool:
        return digest in self._blobs

    def open_read(self, digest: Digest) -> io.BytesIO | None:
        data = self._blobs.get(digest)
        return None if data is None else io.BytesIO(data)

    def open_write(self) -> _MemoryWriter:
        return _MemoryWriter(self)

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        return [] if digest in self._blobs else None

    def touch(self, digest: Digest) -> bool:
        with self._lock:
            if digest not in self._blobs:
                return False
            self._touched[digest] = self._clock()
        return True

    def remove(self, digest: Digest) -> bool:
        with self._lock:
            removed = self._blobs.pop(digest, None) is not None
            self._touched.pop(digest, None)
            if removed:
                self._removals += 1
        return removed

    def stored(self) -> Iterator[StoredObject]:
        with self._lock:
            objects = [
                StoredObject(digest, len(data), self._touched[digest])
                for digest, data in self._blobs.items()
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
                removed.append(StoredObject(digest, len(self._blobs.pop(digest)), touched))
                del self._touched[digest]
            if removed:
                self._removals += 1
        return removed

    def removal_epoch(self) -> int:
        return self._removals

    def close(self) -> None:
        self._blobs.clear()
        self._touched.clear()


BACKEND = Backend("blob", "memory", lambda params: MemoryBlobService(), schemes=("memory",))

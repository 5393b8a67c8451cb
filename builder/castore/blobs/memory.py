"""Blobs in a dict: for tests and as a near cache for small stores."""

from __future__ import annotations

import io
import threading

import blake3

from builder.castore.blobs.service import ChunkMeta
from builder.castore.composition import Backend
from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError


class _MemoryWriter:
    def __init__(self, service: MemoryBlobService) -> None:
        self._service = service
        self._buffer = io.BytesIO()
        self._hasher = blake3.blake3()
        self._done = False

    def write(self, data: bytes | memoryview) -> int:
        if self._done:
            raise InvalidArgumentError("blob writer already closed")
        self._hasher.update(data)
        return self._buffer.write(data)

    def close(self) -> Digest:
        if self._done:
            raise InvalidArgumentError("blob writer already closed")
        self._done = True
        digest = Digest(self._hasher.digest())
        self._service._store(digest, self._buffer.getvalue())
        return digest

    def abort(self) -> None:
        self._done = True
        self._buffer = io.BytesIO()


class MemoryBlobService:
    def __init__(self) -> None:
        self._blobs: dict[Digest, bytes] = {}
        self._lock = threading.Lock()

    def _store(self, digest: Digest, data: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, data)

    def has(self, digest: Digest) -> bool:
        return digest in self._blobs

    def open_read(self, digest: Digest) -> io.BytesIO | None:
        data = self._blobs.get(digest)
        return None if data is None else io.BytesIO(data)

    def open_write(self) -> _MemoryWriter:
        return _MemoryWriter(self)

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        return [] if digest in self._blobs else None

    def close(self) -> None:
        self._blobs.clear()


BACKEND = Backend("blob", "memory", lambda params: MemoryBlobService(), schemes=("memory",))

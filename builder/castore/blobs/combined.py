"""A near/far pair: writes go to both, reads fall through to far and fill near.

The far store is the one that counts: builders sharing it (a fleet on one
bucket) find there what any of them wrote, so a write commits far first and a
blob only near would be invisible to the rest. Near gets it too, so that the
writer reads its own uploads and outputs without a round trip.
"""

from __future__ import annotations

import shutil
from typing import BinaryIO

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService, BlobWriter, ChunkMeta
from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.castore.hit_counts import HitCounts
from builder.errors import IntegrityError


class CombinedBlobService:
    def __init__(self, near: BlobService, far: BlobService) -> None:
        self.near = near
        self.far = far
        self.near_counts = HitCounts()

    def has(self, digest: Digest) -> bool:
        return self.near.has(digest) or self.far.has(digest)

    def open_read(self, digest: Digest) -> BinaryIO | None:
        reader = self.near.open_read(digest)
        self.near_counts.count(reader is not None)
        if reader is not None:
            return reader
        remote = self.far.open_read(digest)
        if remote is None:
            return None
        writer = self.near.open_write()
        try:
            with remote:
                shutil.copyfileobj(remote, writer, READ_CHUNK_SIZE)  # type: ignore[misc]
        except BaseException:
            writer.abort()
            raise
        if writer.close() != digest:
            raise IntegrityError(f"far store returned wrong contents for blob {digest}")
        return self.near.open_read(digest)

    def open_write(self) -> BlobWriter:
        return _WriteBoth(self.near.open_write(), self.far.open_write())

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        found = self.near.chunks(digest)
        return found if found is not None else self.far.chunks(digest)

    def close(self) -> None:
        self.near.close()
        self.far.close()


class _WriteBoth:
    """Streams each write to both writers; committed far first, so near never holds alone."""

    def __init__(self, near: BlobWriter, far: BlobWriter) -> None:
        self._near = near
        self._far = far

    def write(self, data: bytes | memoryview) -> int:
        self._far.write(data)
        return self._near.write(data)

    def close(self) -> Digest:
        try:
            digest = self._far.close()
        except BaseException:
            self._near.abort()
            raise
        near = self._near.close()
        if near != digest:
            raise IntegrityError(f"near store committed blob {near}, far store {digest}")
        return digest

    def abort(self) -> None:
        try:
            self._far.abort()
        finally:
            self._near.abort()


def _build(params: Params) -> CombinedBlobService:
    return CombinedBlobService(params.blob("near"), params.blob("far"))


BACKEND = Backend("blob", "combined", _build)

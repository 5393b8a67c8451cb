"""A near/far pair: writes go near, reads fall through to far and fill near."""

from __future__ import annotations

import shutil
from typing import BinaryIO

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService, BlobWriter, ChunkMeta
from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.errors import IntegrityError


class CombinedBlobService:
    def __init__(self, near: BlobService, far: BlobService) -> None:
        self.near = near
        self.far = far

    def has(self, digest: Digest) -> bool:
        return self.near.has(digest) or self.far.has(digest)

    def open_read(self, digest: Digest) -> BinaryIO | None:
        reader = self.near.open_read(digest)
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
        return self.near.open_write()

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        found = self.near.chunks(digest)
        return found if found is not None else self.far.chunks(digest)

    def close(self) -> None:
        self.near.close()
        self.far.close()


def _build(params: Params) -> CombinedBlobService:
    return CombinedBlobService(params.blob("near"), params.blob("far"))


BACKEND = Backend("blob", "combined", _build)

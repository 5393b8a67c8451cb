"""Whole blobs as bytes, for tests that store and compare small blobs."""

from __future__ import annotations

from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest


def put_bytes(service: BlobService, data: bytes) -> Digest:
    writer = service.open_write()
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_all(service: BlobService, digest: Digest) -> bytes | None:
    reader = service.open_read(digest)
    if reader is None:
        return None
    with reader:
        return reader.read()

"""The write-through blob cache: what one builder writes, another on the same far store reads."""

from __future__ import annotations

from pathlib import Path

from builder.castore.blobs.cache import CacheBlobService
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.digest import Digest


def _read(service: CacheBlobService | FsBlobService, digest: Digest) -> bytes | None:
    reader = service.open_read(digest)
    if reader is None:
        return None
    with reader:
        return reader.read()


def test_a_write_reaches_the_far_store_and_another_near_cache_fills_from_it(
    tmp_path: Path,
) -> None:
    far = FsBlobService(tmp_path / "far")
    one = CacheBlobService(MemoryBlobService(), far)
    other_near = MemoryBlobService()
    other = CacheBlobService(other_near, far)
    payload = b"shared by the fleet\n" * 50_000
    writer = one.open_write()
    for start in range(0, len(payload), 65536):
        writer.write(payload[start : start + 65536])
    digest = writer.close()
    assert _read(far, digest) == payload
    assert one.near.has(digest), "the writer's own near copy serves its next read"
    assert not other_near.has(digest)
    assert _read(other, digest) == payload
    assert other_near.has(digest), "a read from far fills the reader's near cache"
    far.close()
    other_near.close()


def test_an_aborted_write_leaves_no_blob_far(tmp_path: Path) -> None:
    far = FsBlobService(tmp_path / "far")
    writer = CacheBlobService(MemoryBlobService(), far).open_write()
    writer.write(b"never committed")
    writer.abort()
    assert not any(p.is_file() for p in (tmp_path / "far").rglob("*"))
    far.close()

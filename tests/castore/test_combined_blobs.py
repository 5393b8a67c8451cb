"""A combined blob service writes through to its far store, which builders share."""

from __future__ import annotations

from pathlib import Path

from builder.castore.blobs.combined import CombinedBlobService
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.digest import Digest


def test_a_write_lands_near_and_far(tmp_path: Path) -> None:
    near, far = MemoryBlobService(), FsBlobService(tmp_path / "far")
    combined = CombinedBlobService(near, far)
    writer = combined.open_write()
    writer.write(b"shared ")
    writer.write(b"contents")
    digest = writer.close()
    assert digest == Digest.of(b"shared contents")
    assert near.has(digest) and far.has(digest)
    other = CombinedBlobService(MemoryBlobService(), far)
    reader = other.open_read(digest)
    assert reader is not None
    with reader:
        assert reader.read() == b"shared contents"


def test_an_aborted_write_lands_nowhere(tmp_path: Path) -> None:
    near, far = MemoryBlobService(), FsBlobService(tmp_path / "far")
    writer = CombinedBlobService(near, far).open_write()
    writer.write(b"never committed")
    writer.abort()
    digest = Digest.of(b"never committed")
    assert not near.has(digest) and not far.has(digest)

"""The contract every BlobService backend must honour."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import blake3
import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import BlobService, ChunkMeta, LocalBlobFiles
from builder.castore.digest import Digest
from builder.castore.removal import Removable
from tests.blob_bytes import put_bytes, read_all
from tests.digests import EMPTY_DIGEST

HELLO = Digest.parse("5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c")


def test_put_returns_blake3_digest(blob_service: BlobService) -> None:
    assert put_bytes(blob_service, b"Hello World!") == HELLO
    assert blob_service.has(HELLO)
    assert read_all(blob_service, HELLO) == b"Hello World!"


def test_empty_blob(blob_service: BlobService) -> None:
    assert put_bytes(blob_service, b"") == EMPTY_DIGEST
    assert blob_service.has(EMPTY_DIGEST)
    assert read_all(blob_service, EMPTY_DIGEST) == b""


def test_unknown_digest(blob_service: BlobService) -> None:
    unknown = Digest.of(b"never stored")
    assert not blob_service.has(unknown)
    assert blob_service.open_read(unknown) is None
    assert blob_service.chunks(unknown) is None


def test_streamed_write_in_pieces(blob_service: BlobService) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    writer = blob_service.open_write()
    view = memoryview(data)
    for start in range(0, len(data), 65_537):
        writer.write(view[start : start + 65_537])
    digest = writer.close()
    assert digest == Digest(blake3.blake3(data).digest())
    assert read_all(blob_service, digest) == data


def test_seek_and_partial_reads(blob_service: BlobService) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    digest = put_bytes(blob_service, data)
    reader = blob_service.open_read(digest)
    assert reader is not None
    with reader:
        for offset in (0, 1, 1_000_000, len(data) - 3, 12):
            reader.seek(offset)
            assert reader.read(4096) == data[offset : offset + 4096]
        reader.seek(-10, io.SEEK_END)
        assert reader.read() == data[-10:]
        reader.seek(len(data))
        assert reader.read(10) == b""


def test_aborted_write_stores_nothing(blob_service: BlobService) -> None:
    data = b"partial upload " * 1000
    writer = blob_service.open_write()
    writer.write(data)
    writer.abort()
    assert not blob_service.has(Digest.of(data))


def test_idempotent_put(blob_service: BlobService) -> None:
    first = put_bytes(blob_service, b"same")
    second = put_bytes(blob_service, b"same")
    assert first == second
    assert read_all(blob_service, first) == b"same"


def test_chunks_cover_the_blob(blob_service: BlobService) -> None:
    """The chunks read in order are the blob; no chunks means the blob is its only piece."""
    data = os.urandom(1_500_000)
    digest = put_bytes(blob_service, data)
    chunks = blob_service.chunks(digest)
    assert chunks is not None
    pieces = chunks or [ChunkMeta(digest, len(data))]
    assert sum(piece.size for piece in pieces) == len(data)
    offset = 0
    for piece in pieces:
        assert read_all(blob_service, piece.digest) == data[offset : offset + piece.size]
        offset += piece.size


def test_concurrent_writers_of_the_same_blob(blob_service: BlobService) -> None:
    data = os.urandom(300_000)
    results: list[Digest] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            results.append(put_bytes(blob_service, data))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    assert read_all(blob_service, results[0]) == data


@pytest.mark.parametrize("size", [1, 4096, 1 << 20])
def test_sizes_round_trip(blob_service: BlobService, size: int) -> None:
    data = os.urandom(size)
    assert read_all(blob_service, put_bytes(blob_service, data)) == data


def test_only_the_fs_backend_offers_local_blob_files(tmp_path: Path) -> None:
    fs = FsBlobService(tmp_path / "blobs")
    assert isinstance(fs, LocalBlobFiles)
    assert not isinstance(MemoryBlobService(), LocalBlobFiles)
    digest = put_bytes(fs, b"local")
    with open(fs.local_path(digest), "rb") as stored:
        assert stored.read() == b"local"
    fs.close()


def test_removal_moves_the_removal_epoch(blob_service: BlobService) -> None:
    """A backend that can remove blobs must let readers notice (``builder.castore.removal``)."""
    if not isinstance(blob_service, Removable):
        assert not hasattr(blob_service, "remove"), "removes blobs without a removal epoch"
        return
    kept, doomed = put_bytes(blob_service, b"kept"), put_bytes(blob_service, b"doomed")
    before = blob_service.removal_epoch()
    assert blob_service.remove(doomed)
    assert not blob_service.has(doomed)
    assert blob_service.open_read(doomed) is None
    assert read_all(blob_service, kept) == b"kept"
    after = blob_service.removal_epoch()
    assert after != before
    assert not blob_service.remove(doomed)
    assert blob_service.removal_epoch() != before

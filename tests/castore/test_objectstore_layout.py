"""What the object-store backends promise beyond the contract: the chunked layout.

These look inside the store (through the service's own obstore client) to
check that chunks are content-defined, content-addressed, shared between
blobs, verified on read, and that an unfinished write leaves nothing a reader
could mistake for a blob.
"""

from __future__ import annotations

import io
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import blake3
import obstore
import pytest
from fastcdc import fastcdc
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.castore.blobs.objectstore import (
    DEFAULT_AVG_CHUNK_SIZE,
    ObjectStoreBlobService,
    StreamingChunker,
    chunk_key,
    index_key,
)
from builder.castore.digest import Digest
from builder.castore.directories.objectstore import ObjectStoreDirectoryService, directory_key
from builder.castore.directory import Directory
from builder.castore.nodes import FileNode
from builder.castore.objectstore_url import open_store, parse_objectstore_url
from builder.errors import IntegrityError, InvalidArgumentError, UnavailableError
from tests.blob_bytes import put_bytes, read_all
from tests.castore.backends_objectstore import BLOB_BACKENDS, DIRECTORY_BACKENDS
from tests.digests import EMPTY_DIGEST

MIN_CHUNK = DEFAULT_AVG_CHUNK_SIZE // 2
MAX_CHUNK = DEFAULT_AVG_CHUNK_SIZE * 2


@pytest.fixture(params=sorted(BLOB_BACKENDS))
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStoreBlobService]:
    with BLOB_BACKENDS[request.param](tmp_path) as blobs:
        yield blobs


@pytest.fixture(params=sorted(DIRECTORY_BACKENDS))
def directories(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[ObjectStoreDirectoryService]:
    with DIRECTORY_BACKENDS[request.param](tmp_path) as service:
        yield service


def _keys(service: ObjectStoreBlobService, prefix: str) -> list[str]:
    return sorted(
        meta["path"] for batch in obstore.list(service.store, prefix=prefix) for meta in batch
    )


def _whole_cuts(data: bytes, avg: int) -> list[tuple[int, int]]:
    return [(c.offset, c.length) for c in fastcdc(data, avg // 2, avg, avg * 2)]


def _streamed_cuts(data: bytes, avg: int, piece: int) -> list[tuple[int, int]]:
    chunker = StreamingChunker(avg)
    chunks: list[bytes] = []
    for start in range(0, len(data), piece):
        chunks.extend(chunker.feed(data[start : start + piece]))
    chunks.extend(chunker.finish())
    cuts = []
    offset = 0
    for chunk in chunks:
        cuts.append((offset, len(chunk)))
        offset += len(chunk)
    return cuts


def test_large_blob_is_split_into_bounded_content_addressed_chunks(
    service: ObjectStoreBlobService,
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    digest = put_bytes(service, data)
    chunks = service.chunks(digest)
    assert chunks is not None
    assert len(chunks) > 5
    assert sum(c.size for c in chunks) == len(data)
    assert all(MIN_CHUNK <= c.size <= MAX_CHUNK for c in chunks[:-1])
    assert 0 < chunks[-1].size <= MAX_CHUNK
    offset = 0
    for chunk in chunks:
        piece = data[offset : offset + chunk.size]
        assert chunk.digest == Digest(blake3.blake3(piece).digest())
        assert service.has(chunk.digest)
        assert read_all(service, chunk.digest) == piece
        assert service.chunks(chunk.digest) == []
        offset += chunk.size
    assert [(c.digest, c.size) for c in chunks] == [
        (Digest.of(data[o : o + n]), n) for o, n in _whole_cuts(data, DEFAULT_AVG_CHUNK_SIZE)
    ]


def test_small_blob_reports_no_chunk_list(service: ObjectStoreBlobService) -> None:
    digest = put_bytes(service, b"small")
    assert service.chunks(digest) == []
    assert _keys(service, "chunks/") == [chunk_key(digest)]


def test_empty_blob_is_an_index_without_chunks(service: ObjectStoreBlobService) -> None:
    assert put_bytes(service, b"") == EMPTY_DIGEST
    assert _keys(service, "blobs/") == [index_key(EMPTY_DIGEST)]
    assert _keys(service, "chunks/") == []
    assert service.chunks(EMPTY_DIGEST) == []


@pytest.mark.parametrize("piece", [1 << 10, 65_537, 300_000, 2 * 1024 * 1024, 7 << 20])
def test_streaming_cuts_match_whole_buffer_cuts(piece: int) -> None:
    data = os.urandom(6 * 1024 * 1024 + 999)
    expected = _whole_cuts(data, DEFAULT_AVG_CHUNK_SIZE)
    assert _streamed_cuts(data, DEFAULT_AVG_CHUNK_SIZE, piece) == expected


def test_chunker_buffer_stays_bounded_for_one_huge_write() -> None:
    data = os.urandom(24 * 1024 * 1024)
    chunker = StreamingChunker()
    total = 0
    for chunk in chunker.feed(data):
        assert chunker.buffered < chunker.bound
        total += len(chunk)
    assert chunker.buffered < chunker.max_size
    total += sum(len(chunk) for chunk in chunker.finish())
    assert total == len(data)
    assert chunker.buffered == 0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 40_000),
    piece=st.integers(1, 9_000),
    repetitive=st.booleans(),
)
def test_streaming_cuts_match_for_any_stream(
    seed: int, size: int, piece: int, repetitive: bool
) -> None:
    rng = random.Random(seed)
    if repetitive:
        # Low-entropy input forces maximum-size cuts and long carried remainders.
        data = bytes(rng.choice(b"ab") for _ in range(64)) * (size // 64 + 1)
        data = data[:size]
    else:
        data = rng.randbytes(size)
    assert _streamed_cuts(data, 1024, piece) == _whole_cuts(data, 1024)


def test_identical_and_overlapping_blobs_share_chunks(service: ObjectStoreBlobService) -> None:
    data = os.urandom(3 * 1024 * 1024)
    first = put_bytes(service, data)
    stored = _keys(service, "chunks/")
    assert put_bytes(service, data) == first
    assert _keys(service, "chunks/") == stored
    extended = put_bytes(service, data + os.urandom(4096))
    extended_chunks = service.chunks(extended)
    assert extended_chunks is not None
    new = set(_keys(service, "chunks/")) - set(stored)
    assert len(new) <= 2
    assert sum(1 for c in extended_chunks if chunk_key(c.digest) in stored) >= len(stored) - 1


def test_seek_inside_and_across_chunk_boundaries(service: ObjectStoreBlobService) -> None:
    data = os.urandom(2 * 1024 * 1024 + 77)
    digest = put_bytes(service, data)
    chunks = service.chunks(digest)
    assert chunks
    boundaries = []
    offset = 0
    for chunk in chunks:
        offset += chunk.size
        boundaries.append(offset)
    rng = random.Random(7)
    offsets = [0, len(data) - 1, len(data)]
    offsets += [b + d for b in boundaries[:-1] for d in (-1, 0, 1)]
    offsets += [rng.randrange(len(data)) for _ in range(20)]
    reader = service.open_read(digest)
    assert reader is not None
    with reader:
        for position in offsets:
            assert reader.seek(position) == position
            length = rng.choice([1, 100, MAX_CHUNK + 3])
            assert reader.read(length) == data[position : position + length]
            assert reader.tell() == min(position + length, len(data))
        reader.seek(-5, io.SEEK_END)
        assert reader.read() == data[-5:]
        reader.seek(boundaries[0] - 2)
        reader.seek(4, io.SEEK_CUR)
        assert reader.read(3) == data[boundaries[0] + 2 : boundaries[0] + 5]
        with pytest.raises(InvalidArgumentError):
            reader.seek(-1)


def test_read_is_sized_by_what_remains(service: ObjectStoreBlobService) -> None:
    data = os.urandom(1000)
    reader = service.open_read(put_bytes(service, data))
    assert reader is not None
    with reader:
        reader.seek(10)
        assert reader.read(1 << 40) == data[10:]
    with pytest.raises(InvalidArgumentError):
        reader.read(1)


def test_corrupted_chunk_is_detected_on_read(service: ObjectStoreBlobService) -> None:
    data = os.urandom(1024 * 1024)
    digest = put_bytes(service, data)
    chunks = service.chunks(digest)
    assert chunks
    victim = chunks[1]
    obstore.put(service.store, chunk_key(victim.digest), os.urandom(victim.size))
    reader = service.open_read(digest)
    assert reader is not None
    with reader:
        assert reader.read(chunks[0].size) == data[: chunks[0].size]
        with pytest.raises(IntegrityError):
            reader.read(1)
    with pytest.raises(IntegrityError):
        read_all(service, victim.digest)


def test_missing_chunk_is_reported(service: ObjectStoreBlobService) -> None:
    digest = put_bytes(service, os.urandom(1024 * 1024))
    chunks = service.chunks(digest)
    assert chunks
    obstore.delete(service.store, chunk_key(chunks[-1].digest))
    with pytest.raises(IntegrityError):
        read_all(service, digest)


def test_index_naming_wrong_chunks_fails_a_full_read(service: ObjectStoreBlobService) -> None:
    first = put_bytes(service, os.urandom(1024 * 1024))
    second = put_bytes(service, os.urandom(1024 * 1024))
    index = obstore.get(service.store, index_key(second)).bytes().to_bytes()
    obstore.put(service.store, index_key(first), index)
    with pytest.raises(IntegrityError):
        read_all(service, first)
    obstore.put(service.store, index_key(first), b"\xff\xff not a message")
    with pytest.raises(IntegrityError):
        service.open_read(first)


def test_aborted_writer_leaves_the_blob_absent(service: ObjectStoreBlobService) -> None:
    data = os.urandom(3 * 1024 * 1024)
    writer = service.open_write()
    writer.write(data)
    writer.abort()
    digest = Digest.of(data)
    assert not service.has(digest)
    assert service.open_read(digest) is None
    assert service.chunks(digest) is None
    assert _keys(service, "blobs/") == []
    with pytest.raises(InvalidArgumentError):
        writer.write(b"more")


def test_closed_writer_rejects_reuse(service: ObjectStoreBlobService) -> None:
    writer = service.open_write()
    writer.write(b"once")
    writer.close()
    with pytest.raises(InvalidArgumentError):
        writer.close()
    writer.abort()
    assert service.has(Digest.of(b"once"))


def test_directory_objects_are_canonical_and_verified(
    directories: ObjectStoreDirectoryService,
) -> None:
    leaf = Directory(files=(FileNode(b".keep", EMPTY_DIGEST, 0),))
    root = Directory.of([leaf.node(b"a"), leaf.node(b"b")])
    putter = directories.put_multiple_start()
    putter.put(leaf)
    putter.put(root)
    assert putter.close() == root.digest
    stored = obstore.get(directories.store, directory_key(root.digest)).bytes().to_bytes()
    assert stored == root.encoded
    assert [d.digest for d in directories.get_recursive(root.digest)] == [
        root.digest,
        leaf.digest,
    ]
    obstore.put(directories.store, directory_key(leaf.digest), Directory().encoded)
    with pytest.raises(IntegrityError):
        directories.get(leaf.digest)
    with pytest.raises(IntegrityError):
        list(directories.get_recursive(root.digest))


def test_deep_and_wide_closure_is_stored_children_first(
    directories: ObjectStoreDirectoryService,
) -> None:
    leaves = [Directory(files=(FileNode(b"f%d" % i, EMPTY_DIGEST, 0),)) for i in range(20)]
    sent = list(leaves)
    current = Directory.of([leaf.node(b"l%02d" % i) for i, leaf in enumerate(leaves)])
    sent.append(current)
    for depth in range(6):
        current = Directory.of([current.node(b"d%d" % depth), leaves[depth].node(b"x")])
        sent.append(current)
    putter = directories.put_multiple_start()
    for directory in sent:
        putter.put(directory)
    assert putter.close() == current.digest
    assert {d.digest for d in directories.get_recursive(current.digest)} == {d.digest for d in sent}


def test_blobs_and_directories_can_share_one_prefix(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    blobs = ObjectStoreBlobService(url)
    directories = ObjectStoreDirectoryService(url)
    leaf = Directory(files=(FileNode(b".keep", EMPTY_DIGEST, 0),))
    assert directories.put(leaf) == leaf.digest
    digest = put_bytes(blobs, leaf.encoded)
    assert digest == leaf.digest
    assert directories.get(leaf.digest) == leaf
    assert read_all(blobs, digest) == leaf.encoded
    blobs.close()
    directories.close()


def test_parse_objectstore_url() -> None:
    assert parse_objectstore_url("memory://") == ("memory://", {})
    assert parse_objectstore_url("file:///var/lib/castore") == ("file:///var/lib/castore", {})
    assert parse_objectstore_url(
        "s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1&allow_http=true"
    ) == (
        "s3://bucket/some/prefix",
        {"endpoint": "http://127.0.0.1:9000", "region": "eu-west-1", "allow_http": "true"},
    )
    _, options = parse_objectstore_url("s3://b/p?skip_signature=true&endpoint=http%3A%2F%2Fh%3A1")
    assert options == {"skip_signature": "true", "endpoint": "http://h:1"}
    for bad in ("no-scheme", "s3://b/p?region=a&region=b", "s3://b/p#frag"):
        with pytest.raises(InvalidArgumentError):
            parse_objectstore_url(bad)


def test_average_chunk_size_is_bounded() -> None:
    for size in (0, 511, (64 << 20) + 1):
        with pytest.raises(InvalidArgumentError):
            ObjectStoreBlobService("memory://", avg_chunk_size=size)


def test_small_average_chunk_size_round_trips() -> None:
    service = ObjectStoreBlobService("memory://", avg_chunk_size=1024)
    data = os.urandom(100_000)
    digest = put_bytes(service, data)
    chunks = service.chunks(digest)
    assert chunks
    assert all(512 <= c.size <= 2048 for c in chunks[:-1])
    assert read_all(service, digest) == data
    service.close()


def test_unreachable_store_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {
        "endpoint": f"http://127.0.0.1:{port}",
        "region": "us-east-1",
        "allow_http": "true",
        "access_key_id": "x",
        "secret_access_key": "y",
        "connect_timeout": "1s",
    }
    blobs = ObjectStoreBlobService("s3://nowhere/p", options)
    directories = ObjectStoreDirectoryService("s3://nowhere/p", options)
    with pytest.raises(UnavailableError):
        blobs.has(EMPTY_DIGEST)
    with pytest.raises(UnavailableError):
        directories.get(EMPTY_DIGEST)
    blobs.close()
    directories.close()


def test_open_store_rejects_bad_addresses() -> None:
    for url, options in (
        ("nope://x", {}),
        ("memory://", {"region": "x"}),
        ("s3://bucket/p", {"no_such_option": "1"}),
    ):
        with pytest.raises(InvalidArgumentError):
            open_store(url, options)

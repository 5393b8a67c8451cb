"""Stored blobs that rotted or were left short: never served, reported as DATA_LOSS, repairable.

The store's files are damaged the way a disk or a crash would damage them
(a flipped byte, a truncated file) and then read back through real gRPC, the
local reader and a build.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.digest import Digest
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.nodes import FileNode
from builder.castore.wire import Family
from builder.errors import IntegrityError
from builder.executor.request import request_to_proto
from builder.server.castore_server import create_castore_server
from builder.server.castore_servicers import BLOB_CHUNK_SIZE
from tests.blob_bytes import put_bytes, read_all
from tests.server.test_build_grpc import Served, _input, _request, _serve, launcher

__all__ = ["launcher"]

SIZE = 3 * BLOB_CHUNK_SIZE + 12345


def _flip(path: str | Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), offset)
    finally:
        os.close(fd)


@pytest.fixture
def castore(tmp_path: Path) -> Iterator[tuple[FsBlobService, object]]:
    blobs = FsBlobService(tmp_path / "blobs")
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    bound = create_castore_server(
        blobs, directories, [f"grpc+unix://{tmp_path / 'castore.sock'}"], max_workers=4
    )
    bound.server.start()
    channel = open_channel(bound.addresses[0])
    try:
        yield blobs, castore_rpc(Family.TVIX).blobstore_grpc.BlobServiceStub(channel)
    finally:
        channel.close()
        bound.server.stop(None).wait()
        directories.close()
        blobs.close()


def _put(stub: object, data: bytes) -> bytes:
    chunk = castore_rpc(Family.TVIX).blobstore.BlobChunk
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    return stub.Put(iter(chunk(data=p) for p in pieces)).digest  # type: ignore[attr-defined]


def _read(stub: object, digest: bytes) -> tuple[list[bytes], grpc.RpcError | None]:
    """What a sequential reader receives before the stream ends, and how it ends."""
    request = castore_rpc(Family.TVIX).blobstore.ReadBlobRequest(digest=digest)
    received: list[bytes] = []
    try:
        for message in stub.Read(request):  # type: ignore[attr-defined]
            received.append(message.data)
    except grpc.RpcError as error:
        return received, error
    return received, None


@pytest.mark.parametrize("offset", [0, SIZE // 2, SIZE - 1])
def test_flipped_byte_is_data_loss_before_the_last_chunk(
    castore: tuple[FsBlobService, object], offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    blobs, stub = castore
    data = os.urandom(SIZE)
    digest = _put(stub, data)
    path = blobs.local_path(Digest(digest))
    _flip(path, offset)
    with caplog.at_level(logging.ERROR):
        received, error = _read(stub, digest)
    assert error is not None
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert str(Digest(digest)) in (error.details() or "")
    assert sum(map(len, received)) < SIZE
    assert any(
        str(Digest(digest)) in r.getMessage() and str(path) in r.getMessage()
        for r in caplog.records
    )


def test_truncated_blob_is_data_loss(castore: tuple[FsBlobService, object]) -> None:
    """What a power loss can leave without fsync: a name in place, the contents short."""
    blobs, stub = castore
    digest = _put(stub, os.urandom(5000))
    os.truncate(blobs.local_path(Digest(digest)), 0)
    received, error = _read(stub, digest)
    assert error is not None and error.code() == grpc.StatusCode.DATA_LOSS
    assert received == []


def test_putting_the_genuine_bytes_repairs_a_corrupt_blob(
    castore: tuple[FsBlobService, object],
) -> None:
    blobs, stub = castore
    data = os.urandom(SIZE)
    digest = _put(stub, data)
    _flip(blobs.local_path(Digest(digest)), 7)
    assert _read(stub, digest)[1] is not None
    assert _put(stub, data) == digest
    received, error = _read(stub, digest)
    assert error is None
    assert b"".join(received) == data


def test_import_repairs_a_corrupt_blob(tmp_path: Path) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    data = b"small and precious\n"
    digest = put_bytes(blobs, data)
    _flip(blobs.local_path(digest), 0)
    source = tmp_path / "source"
    source.write_bytes(data)
    fd = os.open(source, os.O_RDONLY)
    try:
        assert blobs.import_file(fd) == (digest, len(data))
    finally:
        os.close(fd)
    assert read_all(blobs, digest) == data


def test_ranged_read_of_a_corrupt_blob_fails_too(tmp_path: Path) -> None:
    """A reader that seeks checks the whole blob before it serves any byte."""
    blobs = FsBlobService(tmp_path / "blobs")
    data = os.urandom(10_000)
    digest = put_bytes(blobs, data)
    reader = blobs.open_read(digest)
    assert reader is not None
    with reader:
        reader.seek(100)
        assert reader.read(50) == data[100:150]
    _flip(blobs.local_path(digest), 9_000)
    reader = blobs.open_read(digest)
    assert reader is not None
    with reader, pytest.raises(IntegrityError, match=re.escape(str(digest))):
        reader.seek(100)
        reader.read(50)


def test_blob_and_shard_are_flushed_before_the_blob_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is flushed before the rename, the shard directory after it."""
    blobs = FsBlobService(tmp_path / "blobs")
    events: list[tuple[str, str]] = []
    real = {"fsync": os.fsync, "fdatasync": os.fdatasync, "replace": os.replace}

    def synced(kind: str) -> object:
        def sync(fd: int) -> None:
            events.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))
            real[kind](fd)  # type: ignore[operator]

        return sync

    def replaced(src: str, dst: str) -> None:
        events.append(("rename", str(dst)))
        real["replace"](src, dst)  # type: ignore[operator]

    monkeypatch.setattr(os, "fsync", synced("fsync"))
    monkeypatch.setattr(os, "fdatasync", synced("fdatasync"))
    monkeypatch.setattr(os, "replace", replaced)
    data = b"durable"
    writer = blobs.open_write()
    writer.write(data)
    digest = writer.close()
    monkeypatch.undo()
    final = Path(blobs.local_path(digest))
    rename = events.index(("rename", str(final)))
    assert any(e[0] == "sync" and "/tmp/" in e[1] for e in events[:rename])
    assert ("sync", str(final.parent)) in events[rename:]


def test_build_with_a_corrupt_input_fails_with_data_loss(served: Served, tmp_path: Path) -> None:
    node = _input(served, tmp_path)
    tree = served.store.directories.get(node.digest)
    assert tree is not None
    (file,) = tree.files
    assert isinstance(file, FileNode)
    blobs = served.store.blobs
    assert isinstance(blobs, FsBlobService)
    _flip(blobs.local_path(file.digest), 3)
    request = _request("cat /nix/store/aaa-src/msg > /nix/store/out", inputs=(node,))
    with pytest.raises(grpc.RpcError) as caught:
        served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert str(file.digest) in (caught.value.details() or "")


@pytest.fixture
def served(tmp_path: Path, launcher: object) -> Iterator[Served]:
    yield from _serve(tmp_path, launcher)  # type: ignore[arg-type]


def test_blob_cached_by_an_earlier_build_is_verified_again(served: Served, tmp_path: Path) -> None:
    """The cache shares the store's inode, so a blob verified once can rot later."""
    first = _input(served, tmp_path)
    request = _request("cat /nix/store/aaa-src/msg > /nix/store/out", inputs=(first,))
    served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    tree = served.store.directories.get(first.digest)
    assert tree is not None
    (file,) = tree.files
    blobs = served.store.blobs
    assert isinstance(blobs, FsBlobService)
    _flip(blobs.local_path(file.digest), 3)
    (tmp_path / "src" / "more").write_text("another file, so another tree\n")
    second = _input(served, tmp_path, "bbb-src")
    request = _request("cat /nix/store/bbb-src/msg > /nix/store/out", inputs=(second,))
    with pytest.raises(grpc.RpcError) as caught:
        served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert str(file.digest) in (caught.value.details() or "")


@pytest.fixture
def lying_reader() -> Iterator[tuple[str, list[bytes]]]:
    """A server whose Read streams whatever the test puts in the list, whatever was asked."""
    rpc = castore_rpc(Family.TVIX)
    served: list[bytes] = []

    def read(request: object, context: grpc.ServicerContext) -> Iterator[object]:
        for data in served:
            yield rpc.blobstore.BlobChunk(data=data)

    server = grpc.server(ThreadPoolExecutor(2))
    handler = grpc.unary_stream_rpc_method_handler(
        read,
        request_deserializer=rpc.blobstore.ReadBlobRequest.FromString,
        response_serializer=lambda m: m.SerializeToString(),
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("tvix.castore.v1.BlobService", {"Read": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc+http://127.0.0.1:{port}", served
    finally:
        server.stop(None).wait()


def test_blob_client_withholds_the_end_of_wrong_contents(
    lying_reader: tuple[str, list[bytes]],
) -> None:
    url, served = lying_reader
    genuine = [os.urandom(1000) for _ in range(3)]
    digest = Digest.of(b"".join(genuine))
    client = GrpcBlobService(url)
    try:
        served[:] = genuine
        assert read_all(client, digest) == b"".join(genuine)
        served[:] = [*genuine[:2], b"x" * 1000]
        reader = client.open_read(digest)
        assert reader is not None
        received = b""
        with reader, pytest.raises(IntegrityError, match="hash differently"):
            while chunk := reader.read(500):
                received += chunk
        assert len(received) < 3000
        served[:] = []
        with pytest.raises(IntegrityError):
            client.open_read(digest)
    finally:
        client.close()

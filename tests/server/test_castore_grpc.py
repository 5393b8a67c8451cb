"""The castore servicers as real clients see them: raw stubs of both families over sockets.

Every rejected request is checked for its status code, for a message that
names what is wrong, and for leaving the store exactly as it was.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.objectstore import ObjectStoreBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryPutter, DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.directory import Directory as ModelDirectory
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.endpoint import parse_endpoint
from builder.castore.grpc.extensions import END_MARKER_METADATA, end_marker
from builder.castore.grpc.status import ERROR_OF_CODE, STATUS_OF_ERROR
from builder.castore.grpc.stubs import CastoreRpc, castore_rpc
from builder.castore.nodes import FileNode, SymlinkNode
from builder.castore.wire import Family, directory_to_proto
from builder.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    UnavailableError,
)
from builder.server.castore_server import create_castore_server
from builder.server.castore_servicers import BLOB_CHUNK_SIZE, CANCEL_GRACE
from builder.server.status import INTERNAL_MESSAGE, status_of
from tests.waiting import wait_for

EMPTY_BLOB = blake3.blake3(b"").digest()
SHORT_DIGEST = b"\x01" * 31
UNKNOWN = blake3.blake3(b"never stored").digest()


@dataclass
class Castore:
    family: Family
    url: str
    channel: grpc.Channel
    blob_root: Path
    database: Path

    @property
    def rpc(self) -> CastoreRpc:
        return castore_rpc(self.family)

    @property
    def blobs(self) -> Any:
        return self.rpc.blobstore_grpc.BlobServiceStub(self.channel)

    @property
    def directories(self) -> Any:
        return self.rpc.directory_grpc.DirectoryServiceStub(self.channel)

    def chunk(self, data: bytes) -> Any:
        return self.rpc.blobstore.BlobChunk(data=data)

    def stat(self, digest: bytes, send_chunks: bool = False) -> Any:
        request = self.rpc.blobstore.StatBlobRequest(digest=digest, send_chunks=send_chunks)
        return self.blobs.Stat(request)

    def read(self, digest: bytes) -> list[bytes]:
        request = self.rpc.blobstore.ReadBlobRequest(digest=digest)
        return [message.data for message in self.blobs.Read(request)]

    def put_blob(self, data: bytes) -> bytes:
        pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
        return self.blobs.Put(iter(self.chunk(p) for p in pieces)).digest

    def get(self, digest: bytes, recursive: bool = False) -> list[Any]:
        request = self.rpc.directory.GetDirectoryRequest(digest=digest, recursive=recursive)
        return list(self.directories.Get(request))

    def put_directories(self, messages: list[Any]) -> bytes:
        return self.directories.Put(iter(messages)).root_digest

    def directory(
        self,
        directories: tuple[tuple[bytes, bytes, int], ...] = (),
        files: tuple[tuple[bytes, bytes, int], ...] = (),
        symlinks: tuple[tuple[bytes, bytes], ...] = (),
    ) -> Any:
        """A Directory message built field by field, so that broken ones can be sent."""
        mod = self.family.castore
        dn, fn, sn, _ = self.family.message_names()
        return mod.Directory(
            directories=[getattr(mod, dn)(name=n, digest=d, size=s) for n, d, s in directories],
            files=[getattr(mod, fn)(name=n, digest=d, size=s) for n, d, s in files],
            symlinks=[getattr(mod, sn)(name=n, target=t) for n, t in symlinks],
        )

    def directory_rows(self) -> int:
        with sqlite3.connect(self.database) as conn:
            return int(conn.execute("SELECT count(*) FROM directories").fetchone()[0])

    def blob_files(self) -> list[Path]:
        """Every file in the fs blob store, temporary uploads included."""
        return sorted(p for p in self.blob_root.rglob("*") if p.is_file())


def digest_of(message: Any) -> bytes:
    return blake3.blake3(message.SerializeToString(deterministic=True)).digest()


# Uploads without an end marker wait this long in the cancellation tests for the
# close event of a cancelled call: the default grace is a bet on how quickly the
# event arrives, and a busy host may take longer; these tests check that a
# cancellation that arrives is honoured, not how soon.
UNHURRIED_GRACE = 2.0


def running(
    blobs: BlobService,
    directories: DirectoryService,
    listen: str,
    cancel_grace: float = CANCEL_GRACE,
) -> tuple[grpc.Server, str]:
    bound = create_castore_server(
        blobs, directories, [listen], max_workers=8, cancel_grace=cancel_grace
    )
    bound.server.start()
    return bound.server, bound.addresses[0]


FAMILY_TRANSPORTS = [(Family.TVIX, "unix"), (Family.SNIX, "tcp")]
FAMILY_TRANSPORT_IDS = ["tvix-unix", "snix-tcp"]


def listen_url(transport: str, tmp_path: Path) -> str:
    if transport == "unix":
        return f"grpc+unix://{tmp_path / 'castore.sock'}"
    return "grpc+http://127.0.0.1:0"


@pytest.fixture(params=FAMILY_TRANSPORTS, ids=FAMILY_TRANSPORT_IDS)
def castore(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Castore]:
    family, transport = request.param
    blobs = FsBlobService(tmp_path / "blobs")
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    server, url = running(blobs, directories, listen_url(transport, tmp_path))
    channel = open_channel(url)
    try:
        yield Castore(family, url, channel, tmp_path / "blobs", tmp_path / "dirs.sqlite")
    finally:
        channel.close()
        server.stop(None).wait()
        directories.close()


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# --- digests in requests ---------------------------------------------------


@pytest.mark.parametrize("rpc", ["Stat", "Read", "Get", "Get recursive"])
def test_wrong_digest_length_is_invalid_argument(castore: Castore, rpc: str) -> None:
    calls: dict[str, Callable[[], object]] = {
        "Stat": lambda: castore.stat(SHORT_DIGEST),
        "Read": lambda: castore.read(SHORT_DIGEST),
        "Get": lambda: castore.get(SHORT_DIGEST),
        "Get recursive": lambda: castore.get(SHORT_DIGEST, recursive=True),
    }
    error = rpc_error(calls[rpc])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "digest: digest must be 32 bytes, got 31"


@pytest.mark.parametrize("rpc", ["Stat", "Stat chunks", "Read", "Get", "Get recursive"])
def test_unknown_digest_is_not_found(castore: Castore, rpc: str) -> None:
    calls: dict[str, Callable[[], object]] = {
        "Stat": lambda: castore.stat(UNKNOWN),
        "Stat chunks": lambda: castore.stat(UNKNOWN, send_chunks=True),
        "Read": lambda: castore.read(UNKNOWN),
        "Get": lambda: castore.get(UNKNOWN),
        "Get recursive": lambda: castore.get(UNKNOWN, recursive=True),
    }
    error = rpc_error(calls[rpc])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert re.fullmatch(r"(blob|directory) blake3-\S+ not found", error.details() or "")


# --- blobs -------------------------------------------------------------------


def test_blob_round_trip_in_bounded_messages(castore: Castore) -> None:
    data = os.urandom(3 * BLOB_CHUNK_SIZE + 17)
    digest = castore.put_blob(data)
    assert digest == blake3.blake3(data).digest()
    assert castore.stat(digest).chunks == []
    pieces = castore.read(digest)
    assert max(len(p) for p in pieces) <= BLOB_CHUNK_SIZE <= 1 << 20
    assert b"".join(pieces) == data


def test_empty_blob(castore: Castore) -> None:
    assert castore.blobs.Put(iter([])).digest == EMPTY_BLOB
    assert castore.read(EMPTY_BLOB) == []


@pytest.mark.parametrize("how", ["client cancels", "request iterator fails"])
def test_truncated_upload_stores_nothing(castore: Castore, how: str) -> None:
    block = os.urandom(1 << 20)
    sent = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[Any]:
        for _ in range(3):
            yield castore.chunk(block)
        sent.set()
        release.wait(60)
        if how == "request iterator fails":
            raise OSError("upload source broke")

    future = castore.blobs.Put.future(requests())
    assert sent.wait(60)
    wait_for(
        lambda: sum(p.stat().st_size for p in castore.blob_files()) >= 2 << 20,
        "the server to receive the first chunks",
    )
    if how == "client cancels":
        future.cancel()
    release.set()
    with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
        future.result(timeout=60)
    wait_for(lambda: not castore.blob_files(), "the partial upload to be removed")
    for prefix in (1, 2, 3):
        error = rpc_error(lambda n=prefix: castore.stat(blake3.blake3(block * n).digest()))
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_aborted_client_upload_stores_nothing(castore: Castore) -> None:
    """Our writer, which marks a complete upload's end, abandons one midway."""
    service = GrpcBlobService(castore.url, castore.family)
    block = os.urandom(1 << 20)
    writer = service.open_write()
    try:
        writer.write(block * 2)
        wait_for(
            lambda: sum(p.stat().st_size for p in castore.blob_files()) >= 1 << 20,
            "the server to receive the first chunks",
        )
        writer.abort()
        wait_for(lambda: not castore.blob_files(), "the partial upload to be removed")
        for prefix in (1, 2):
            error = rpc_error(lambda n=prefix: castore.stat(blake3.blake3(block * n).digest()))
            assert error.code() == grpc.StatusCode.NOT_FOUND
    finally:
        service.close()


def test_marked_upload_is_stored(castore: Castore) -> None:
    """An empty last chunk marks the end; it adds no bytes to the blob."""
    data = os.urandom(5000)
    chunks = [castore.chunk(data[:3000]), castore.chunk(data[3000:]), castore.chunk(b"")]
    digest = castore.blobs.Put(iter(chunks)).digest
    assert digest == blake3.blake3(data).digest()
    assert b"".join(castore.read(digest)) == data


@pytest.mark.parametrize(("family", "transport"), FAMILY_TRANSPORTS, ids=FAMILY_TRANSPORT_IDS)
def test_cancelled_small_uploads_store_nothing(
    family: Family, transport: str, tmp_path: Path
) -> None:
    """Cancellations racing the end of many small unmarked streams never leave a blob."""
    blobs = FsBlobService(tmp_path / "blobs")
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    server, url = running(
        blobs, directories, listen_url(transport, tmp_path), cancel_grace=UNHURRIED_GRACE
    )
    channel = open_channel(url)
    castore = Castore(family, url, channel, tmp_path / "blobs", tmp_path / "dirs.sqlite")
    try:
        digests = []
        for n in range(50):
            data = n.to_bytes(4, "little") + os.urandom(300)
            digests.append(blake3.blake3(data).digest())
            messages: queue.Queue[Any] = queue.Queue()

            def requests(source: queue.Queue[Any] = messages) -> Iterator[Any]:
                while (message := source.get()) is not None:
                    yield message

            future = castore.blobs.Put.future(requests())
            messages.put(castore.chunk(data))
            wait_for(lambda: any(castore.blob_files()), "the server to take the chunk")
            future.cancel()
            messages.put(None)
            with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
                future.result(timeout=60)
            wait_for(lambda: not castore.blob_files(), "the partial upload to be removed")
        for digest in digests:
            assert rpc_error(lambda d=digest: castore.stat(d)).code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        server.stop(None).wait()
        directories.close()


def test_stat_and_read_of_chunks(tmp_path: Path) -> None:
    """A chunking store behind the server: chunk digests from Stat are readable on their own."""
    blobs = ObjectStoreBlobService("memory://")
    server, url = running(blobs, MemoryDirectoryService(), "grpc+http://127.0.0.1:0")
    channel = open_channel(url)
    try:
        for family in Family:
            store = Castore(family, url, channel, tmp_path, tmp_path)
            data = os.urandom(2 << 20)
            digest = store.put_blob(data)
            chunks = store.stat(digest, send_chunks=True).chunks
            assert len(chunks) > 1
            assert sum(c.size for c in chunks) == len(data)
            offset = 0
            for chunk in chunks:
                assert store.stat(chunk.digest).chunks == []
                pieces = store.read(chunk.digest)
                assert max(len(p) for p in pieces) <= BLOB_CHUNK_SIZE
                assert b"".join(pieces) == data[offset : offset + chunk.size]
                offset += chunk.size
    finally:
        channel.close()
        server.stop(None).wait()
        blobs.close()


# --- directories -------------------------------------------------------------


def _keep(c: Castore) -> Any:
    return c.directory(files=((b".keep", EMPTY_BLOB, 0),))


PUT_REJECTIONS: dict[str, tuple[Callable[[Castore], list[Any]], str]] = {
    "unsorted names": (
        lambda c: [c.directory(files=((b"b", EMPTY_BLOB, 0), (b"a", EMPTY_BLOB, 0)))],
        r"directory #0 \(blake3-\S+\): files: unsorted name b'a' after b'b'",
    ),
    "duplicate names": (
        lambda c: [c.directory(files=((b"a", EMPTY_BLOB, 0), (b"a", EMPTY_BLOB, 0)))],
        r"files: duplicate name b'a' after b'a'",
    ),
    "duplicate across lists": (
        lambda c: [c.directory(files=((b"a", EMPTY_BLOB, 0),), symlinks=((b"a", b"t"),))],
        r"symlinks: duplicate name b'a' across lists",
    ),
    "dot-dot name": (
        lambda c: [c.directory(symlinks=((b"..", b"t"),))],
        r"symlink: name b'\.\.' is not allowed",
    ),
    "slash in name": (
        lambda c: [c.directory(files=((b"a/b", EMPTY_BLOB, 0),))],
        r"file: name b'a/b' contains '/'",
    ),
    "empty name": (
        lambda c: [c.directory(files=((b"", EMPTY_BLOB, 0),))],
        r"file: name is empty",
    ),
    "wrong child size": (
        lambda c: [_keep(c), c.directory(directories=((b"k", digest_of(_keep(c)), 7),))],
        r"directory #1 \(blake3-\S+\): child b'k' has size 7, but directory blake3-\S+ "
        r"has size 2",
    ),
    "root does not connect": (
        lambda c: [_keep(c), c.directory(symlinks=((b"s", b"t"),))],
        r"directory blake3-\S+ is not connected to the root blake3-\S+",
    ),
    "child sent after its parent": (
        lambda c: [c.directory(directories=((b"k", digest_of(_keep(c)), 2),)), _keep(c)],
        r"directory #0 \(blake3-\S+\): child b'k' refers to directory blake3-\S+, "
        r"which was neither sent before nor stored",
    ),
    "short child digest": (
        lambda c: [c.directory(directories=((b"k", SHORT_DIGEST, 2),))],
        r"directory #0: directories\[0\]\.digest: digest must be 32 bytes, got 31",
    ),
    "empty stream": (lambda c: [], r"no directories were sent"),
}


@pytest.mark.parametrize("case", sorted(PUT_REJECTIONS))
def test_directory_put_rejections(castore: Castore, case: str) -> None:
    build, pattern = PUT_REJECTIONS[case]
    castore.put_directories([castore.directory()])
    before = castore.directory_rows()
    messages = build(castore)
    error = rpc_error(lambda: castore.put_directories(messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(pattern, error.details() or ""), error.details()
    assert castore.directory_rows() == before
    for message in messages:
        assert rpc_error(lambda m=message: castore.get(digest_of(m))).code() == (
            grpc.StatusCode.NOT_FOUND
        )


class CountingPutter:
    def __init__(self, inner: DirectoryPutter, counter: CountingDirectories) -> None:
        self._inner = inner
        self._counter = counter

    def put(self, directory: ModelDirectory) -> None:
        self._inner.put(directory)
        self._counter.received += 1

    def close(self) -> Digest:
        return self._inner.close()


class CountingDirectories:
    """Counts the directories Put streams have handed the store, so a test can wait for one."""

    def __init__(self, inner: DirectoryService) -> None:
        self._inner = inner
        self.received = 0

    def get(self, digest: Digest) -> ModelDirectory | None:
        return self._inner.get(digest)

    def get_recursive(self, digest: Digest) -> Iterator[ModelDirectory]:
        return self._inner.get_recursive(digest)

    def put(self, directory: ModelDirectory) -> Digest:
        return self._inner.put(directory)

    def put_multiple_start(self) -> DirectoryPutter:
        return CountingPutter(self._inner.put_multiple_start(), self)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize(("family", "transport"), FAMILY_TRANSPORTS, ids=FAMILY_TRANSPORT_IDS)
def test_cancelled_directory_put_stores_nothing(
    family: Family, transport: str, tmp_path: Path
) -> None:
    """A client cancels a Put stream the server has begun to take; nothing is stored."""
    directories = CountingDirectories(SqliteDirectoryService(tmp_path / "dirs.sqlite"))
    server, url = running(
        FsBlobService(tmp_path / "blobs"),
        directories,
        listen_url(transport, tmp_path),
        cancel_grace=UNHURRIED_GRACE,
    )
    channel = open_channel(url)
    castore = Castore(family, url, channel, tmp_path / "blobs", tmp_path / "dirs.sqlite")
    release = threading.Event()

    def requests() -> Iterator[Any]:
        yield _keep(castore)
        release.wait(60)

    try:
        future = castore.directories.Put.future(requests())
        wait_for(lambda: directories.received == 1, "the server to take the first directory")
        future.cancel()
        release.set()
        with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
            future.result(timeout=60)
        assert castore.directory_rows() == 0
    finally:
        release.set()
        channel.close()
        server.stop(None).wait()
        directories.close()


def test_directory_upload_announcing_the_marker_is_stored_only_with_it(castore: Castore) -> None:
    """A stream that half-closes normally but lacks the announced marker was cut short."""
    keep = _keep(castore)
    parent = castore.directory(directories=((b"keep", digest_of(keep), 2),))
    metadata = (END_MARKER_METADATA,)
    with pytest.raises(grpc.RpcError) as caught:
        castore.directories.Put(iter([keep, parent]), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert castore.directory_rows() == 0
    marker = end_marker(castore.family)
    root = castore.directories.Put(iter([keep, parent, marker]), metadata=metadata).root_digest
    assert root == digest_of(parent)
    assert castore.directory_rows() == 2


def test_the_end_marker_is_no_directory_without_the_announcement(castore: Castore) -> None:
    """Unannounced, the marker is an ordinary (invalid) directory, as any castore server sees it."""
    error = rpc_error(lambda: castore.directories.Put(iter([end_marker(castore.family)])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name is empty" in (error.details() or "")
    assert castore.directory_rows() == 0


def test_recursive_get_is_root_first_breadth_first(castore: Castore) -> None:
    keep = _keep(castore)
    leaf = castore.directory(files=((b"f", EMPTY_BLOB, 0),), symlinks=((b"l", b"f"),))
    middle = castore.directory(directories=((b"leaf", digest_of(leaf), 4),))
    root = castore.directory(
        directories=(
            (b"a-middle", digest_of(middle), 6),
            (b"b-keep", digest_of(keep), 2),
            (b"c-leaf-again", digest_of(leaf), 4),
        )
    )
    assert castore.put_directories([leaf, keep, middle, root]) == digest_of(root)
    received = castore.get(digest_of(root), recursive=True)
    assert [digest_of(m) for m in received] == [
        digest_of(root),
        digest_of(middle),
        digest_of(keep),
        digest_of(leaf),
    ]
    assert received[0] == root
    assert castore.get(digest_of(root)) == [root]


# --- the server as a whole ---------------------------------------------------


def test_both_families_are_served_under_their_own_paths(castore: Castore) -> None:
    digest = castore.put_blob(b"Hello World!")
    request = castore.rpc.blobstore.StatBlobRequest(digest=digest).SerializeToString()
    get_empty = castore.rpc.directory.GetDirectoryRequest(digest=EMPTY_BLOB).SerializeToString()
    for package in ("tvix.castore.v1", "snix.castore.v1"):
        stat = castore.channel.unary_unary(
            f"/{package}.BlobService/Stat",
            request_serializer=None,
            response_deserializer=None,
        )
        assert stat(request) == b""
        get = castore.channel.unary_stream(f"/{package}.DirectoryService/Get")
        error = rpc_error(lambda g=get: list(g(get_empty)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    other = castore.channel.unary_unary("/other.castore.v1.BlobService/Stat")
    assert rpc_error(lambda: other(request)).code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_and_reflection(castore: Castore) -> None:
    checker = health_pb2_grpc.HealthStub(castore.channel)
    for service in ("", "tvix.castore.v1.BlobService", "snix.castore.v1.DirectoryService"):
        response = checker.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(castore.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]))
    names = {s.name for s in response.list_services_response.service}
    assert {
        f"{family}.castore.v1.{service}"
        for family in ("tvix", "snix")
        for service in ("BlobService", "DirectoryService")
    } <= names


def test_client_reports_an_unreachable_server(tmp_path: Path) -> None:
    client = GrpcBlobService(f"grpc+unix://{tmp_path / 'nobody.sock'}")
    try:
        with pytest.raises(UnavailableError):
            client.has(Digest.of(b"x"))
    finally:
        client.close()


# --- status mapping and listen addresses -------------------------------------


def test_status_mapping_round_trips_through_the_client_table() -> None:
    for cls, code in STATUS_OF_ERROR:
        assert status_of(cls("why")) == (code, "why")
        assert ERROR_OF_CODE[code] is cls
    assert grpc.StatusCode.INTERNAL not in ERROR_OF_CODE, "INTERNAL is left for server bugs"
    assert status_of(RuntimeError("secret detail")) == (
        grpc.StatusCode.INTERNAL,
        INTERNAL_MESSAGE,
    )


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("grpc+unix:///run/castore.sock", "unix:/run/castore.sock"),
        ("grpc+http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("grpc+http://localhost:8000/", "localhost:8000"),
        ("grpc+http://[::1]:8000", "[::1]:8000"),
    ],
)
def test_listen_addresses(url: str, target: str) -> None:
    assert parse_endpoint(url).target == target


@pytest.mark.parametrize(
    "url",
    [
        "grpc+unix://relative.sock",
        "grpc+unix://host/abs.sock",
        "grpc+http://127.0.0.1",
        "grpc+http://127.0.0.1:port",
        "grpc+http://127.0.0.1:80/path",
        "http://127.0.0.1:80",
        "/run/castore.sock",
    ],
)
def test_bad_listen_addresses(url: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(repr(url))):
        parse_endpoint(url)


def test_stale_socket_is_replaced_and_other_files_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "castore.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    server, url = running(
        FsBlobService(tmp_path / "b"), MemoryDirectoryService(), f"grpc+unix://{path}"
    )
    try:
        client = GrpcBlobService(url, Family.SNIX)
        assert not client.has(Digest.of(b"x"))
        client.close()
    finally:
        server.stop(None).wait()
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(FailedPreconditionError, match="is not a socket"):
        create_castore_server(
            MemoryBlobService(), MemoryDirectoryService(), [f"grpc+unix://{regular}"]
        )
    assert regular.read_text() == "keep me"


def test_ipv6_loopback(tmp_path: Path) -> None:
    server, url = running(
        FsBlobService(tmp_path / "b"), MemoryDirectoryService(), "grpc+http://[::1]:0"
    )
    try:
        assert re.fullmatch(r"grpc\+http://\[::1\]:\d+", url)
        client = GrpcBlobService(url)
        assert not client.has(Digest.of(b"x"))
        client.close()
    finally:
        server.stop(None).wait()


def test_busy_port_is_an_error() -> None:
    first, url = running(MemoryBlobService(), MemoryDirectoryService(), "grpc+http://127.0.0.1:0")
    try:
        with pytest.raises(UnavailableError, match="cannot listen"):
            create_castore_server(MemoryBlobService(), MemoryDirectoryService(), [url])
    finally:
        first.stop(None).wait()


# --- clients check what a server sends --------------------------------------


def _lying_server(
    directory_stream: list[ModelDirectory], put_digest: bytes
) -> tuple[grpc.Server, str]:
    """A real server that answers Get with a fixed stream and Put with a fixed digest."""
    rpc = castore_rpc(Family.TVIX)

    def get(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for directory in directory_stream:
            yield directory_to_proto(directory)

    def put(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        for _ in requests:
            pass
        return rpc.blobstore.PutBlobResponse(digest=put_digest)

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tvix.castore.v1.DirectoryService",
                {
                    "Get": grpc.unary_stream_rpc_method_handler(
                        get,
                        request_deserializer=rpc.directory.GetDirectoryRequest.FromString,
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "tvix.castore.v1.BlobService",
                {
                    "Put": grpc.stream_unary_rpc_method_handler(
                        put,
                        request_deserializer=rpc.blobstore.BlobChunk.FromString,
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"grpc+http://127.0.0.1:{port}"


KEEP = ModelDirectory.of([FileNode(b".keep", Digest(EMPTY_BLOB), 0)])
PARENT = ModelDirectory.of([KEEP.node(b"k")])
STRANGER = ModelDirectory.of([SymlinkNode(b"s", b"t")])


@pytest.mark.parametrize(
    ("stream", "recursive", "match"),
    [
        ([STRANGER], False, "asked for directory .*, received"),
        ([STRANGER], True, "sent directory .* without being referenced"),
        ([PARENT, KEEP, KEEP], True, "sent directory .* again"),
        ([PARENT], True, "ended with 1 referenced directories missing"),
        ([], False, "answered the request .* with nothing"),
    ],
)
def test_directory_client_rejects_what_was_not_asked_for(
    stream: list[ModelDirectory], recursive: bool, match: str
) -> None:
    server, url = _lying_server(stream, b"")
    client = GrpcDirectoryService(url)
    try:
        with pytest.raises(IntegrityError, match=match):
            if recursive:
                list(client.get_recursive(PARENT.digest))
            else:
                client.get(PARENT.digest)
    finally:
        client.close()
        server.stop(None).wait()


def test_blob_client_rejects_a_wrong_digest_from_the_server() -> None:
    server, url = _lying_server([], bytes(Digest.of(b"something else")))
    client = GrpcBlobService(url)
    try:
        writer = client.open_write()
        writer.write(b"Hello World!")
        with pytest.raises(IntegrityError, match="server stored the upload as"):
            writer.close()
    finally:
        client.close()
        server.stop(None).wait()

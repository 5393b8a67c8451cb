"""The batched blob calls over a real socket, and the client's fallback when a server lacks them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from builder.castore.blobs.batches import MAX_BATCH_BLOBS, SMALL_BLOB_SIZE
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.grpc.channel import open_channel
from builder.errors import InvalidArgumentError
from builder.proto.builder.v1 import blob_batches_pb2 as pb
from builder.proto.builder.v1 import blob_batches_pb2_grpc as pb_grpc
from builder.server.castore_server import create_castore_server


@pytest.fixture(params=[True, False], ids=["batches", "plain"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FsBlobService]]:
    blobs = FsBlobService(tmp_path / "blobs")
    bound = create_castore_server(
        blobs,
        MemoryDirectoryService(),
        [f"grpc+unix://{tmp_path / 'castore.sock'}"],
        max_workers=8,
        extensions=request.param,
    )
    bound.server.start()
    try:
        yield bound.addresses[0], blobs
    finally:
        bound.server.stop(None).wait()


def _blobs(count: int, seed: int) -> list[tuple[Digest, bytes]]:
    made = []
    for n in range(count):
        data = seed.to_bytes(2, "little") + n.to_bytes(4, "little") + os.urandom(n % 700)
        made.append((Digest.of(data), data))
    return made


def test_client_puts_finds_and_reads_many(server: tuple[str, FsBlobService]) -> None:
    """More blobs than one batch holds, on a server with the batches and on one without."""
    url, stored = server
    client = GrpcBlobService(url)
    try:
        blobs = _blobs(MAX_BATCH_BLOBS + 300, 1)
        absent = _blobs(5, 2)
        client.put_small(iter(blobs))
        assert all(stored.has(digest) for digest, _ in blobs)
        asked = [digest for digest, _ in absent[:2] + blobs[:50] + absent[2:]]
        assert client.missing(asked) == [digest for digest, _ in absent]
        wanted = [(digest, len(data)) for digest, data in absent[:1] + blobs + absent[1:]]
        assert list(client.read_small(iter(wanted))) == blobs
    finally:
        client.close()


def test_client_refuses_a_large_blob_in_a_batch(server: tuple[str, FsBlobService]) -> None:
    client = GrpcBlobService(server[0])
    try:
        big = os.urandom(SMALL_BLOB_SIZE + 1)
        with pytest.raises(InvalidArgumentError, match="more than a batched blob's"):
            client.put_small([(Digest.of(big), big)])
    finally:
        client.close()


def test_wrong_digest_and_oversized_batches_over_the_wire(tmp_path: Path) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    bound = create_castore_server(
        blobs, MemoryDirectoryService(), [f"grpc+unix://{tmp_path / 's.sock'}"], max_workers=4
    )
    bound.server.start()
    channel = open_channel(bound.addresses[0])
    try:
        stub = pb_grpc.BlobBatchesStub(channel)
        (good, data), (other, _) = _blobs(2, 3)
        wrong = pb.BatchPutBlobsRequest(
            blobs=[pb.Blob(digest=good, data=data), pb.Blob(digest=other, data=data)]
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.BatchPutBlobs(wrong)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "blobs[1].digest: claims" in (caught.value.details() or "")
        assert not blobs.has(good)
        many = pb.BatchReadBlobsRequest(digests=[good] * (MAX_BATCH_BLOBS + 1))
        with pytest.raises(grpc.RpcError) as caught:
            stub.BatchReadBlobs(many)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        short = pb.FindMissingBlobsRequest(digests=[good, b"\x01" * 31])
        with pytest.raises(grpc.RpcError) as caught:
            stub.FindMissingBlobs(short)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith("digests[1]")
    finally:
        channel.close()
        bound.server.stop(None).wait()

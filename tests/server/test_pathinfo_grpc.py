"""The PathInfoService of both families on a real socket: statuses, content checks, NAR.

Raw stubs send what our own client never would (short digests, empty
lookups, records whose contents are missing) to see the status each earns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.nar import nar_hash
from builder.castore.grpc.channel import open_channel
from builder.castore.nodes import FileNode
from builder.castore.wire import Family, node_to_proto
from builder.errors import FailedPreconditionError
from builder.nix.nix_store import nix_environment
from builder.server.castore_server import create_castore_server
from builder.store.pathinfos.grpc import GrpcPathInfoService
from builder.store.pathinfos.memory import MemoryPathInfoService
from builder.store.stubs import store_rpc
from builder.store.wire import path_info_to_proto
from tests.requirements import require_nix
from tests.store.infos import full_info, store_path, symlink_info


@dataclass
class Served:
    url: str
    channel: grpc.Channel
    blobs: BlobService
    directories: DirectoryService
    pathinfos: MemoryPathInfoService

    def stub(self, family: Family) -> Any:
        return store_rpc(family).rpc_grpc.PathInfoServiceStub(self.channel)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    blobs, directories, pathinfos = (
        MemoryBlobService(),
        MemoryDirectoryService(),
        MemoryPathInfoService(),
    )
    bound = create_castore_server(
        blobs,
        directories,
        [f"grpc+unix://{tmp_path / 'store.sock'}"],
        max_workers=4,
        pathinfos=pathinfos,
    )
    bound.server.start()
    channel = open_channel(bound.addresses[0])
    try:
        yield Served(bound.addresses[0], channel, blobs, directories, pathinfos)
    finally:
        channel.close()
        bound.server.stop(None).wait()


def _error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


FAMILIES = list(Family)


@pytest.mark.parametrize("family", FAMILIES)
def test_get_statuses(served: Served, family: Family) -> None:
    stub, messages = served.stub(family), store_rpc(family).rpc
    unknown = _error(lambda: stub.Get(messages.GetPathInfoRequest(by_output_hash=bytes(20))))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    short = _error(lambda: stub.Get(messages.GetPathInfoRequest(by_output_hash=bytes(19))))
    assert short.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "by_output_hash: 19 bytes, expected 20" in str(short.details())
    empty = _error(lambda: stub.Get(messages.GetPathInfoRequest()))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = served.pathinfos.put(symlink_info("known"))
    found = stub.Get(messages.GetPathInfoRequest(by_output_hash=info.path.digest))
    assert found == path_info_to_proto(info, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_put_refuses_missing_contents_naming_them(served: Served, family: Family) -> None:
    stub = served.stub(family)
    scratch_blobs, scratch_directories = MemoryBlobService(), MemoryDirectoryService()
    info = full_info(scratch_blobs, scratch_directories)
    message = path_info_to_proto(info, family)

    missing_directory = _error(lambda: stub.Put(message))
    assert missing_directory.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"directory {info.node.digest} is not in the castore" in str(missing_directory.details())

    (leaf,) = scratch_directories.get_recursive(Digest(info.node.digest))
    served.directories.put(leaf)
    missing_blob = _error(lambda: stub.Put(message))
    assert missing_blob.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{info.path.basename}/run: blob" in str(missing_blob.details())
    assert served.pathinfos.get(info.path.digest) is None

    (file,) = leaf.files
    reader = scratch_blobs.open_read(file.digest)
    assert reader is not None
    writer = served.blobs.open_write()
    with reader:
        writer.write(reader.read())
    writer.close()
    assert stub.Put(message) == message
    assert served.pathinfos.get(info.path.digest) == info


@pytest.mark.parametrize("family", FAMILIES)
def test_put_refuses_a_malformed_record(served: Served, family: Family) -> None:
    message = path_info_to_proto(symlink_info("bad"), family)
    message.references.append(store_path("ref").digest)
    error = _error(lambda: served.stub(family).Put(message))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reference_names: 0 names for 1 references" in str(error.details())


@pytest.mark.parametrize("family", FAMILIES)
def test_list_streams_every_record(served: Served, family: Family) -> None:
    infos = [served.pathinfos.put(symlink_info(f"l{i}")) for i in range(20)]
    messages = store_rpc(family).rpc
    listed = list(served.stub(family).List(messages.ListPathInfoRequest()))
    assert sorted(m.SerializeToString() for m in listed) == sorted(
        path_info_to_proto(i, family).SerializeToString() for i in infos
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_calculate_nar_agrees_with_nix(served: Served, family: Family, tmp_path: Path) -> None:
    require_nix()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data").write_bytes(b"x" * 10_000)
    (tree / "run").write_text("#!/bin/sh\n")
    (tree / "run").chmod(0o755)
    (tree / "link").symlink_to("sub/data")
    node = ingest_path(tree, served.blobs, served.directories)
    dumped = subprocess.run(
        ["nix-store", "--dump", str(tree)],
        env=nix_environment(),
        capture_output=True,
        check=True,
    ).stdout
    response = served.stub(family).CalculateNAR(node_to_proto(node, family))
    assert response.nar_sha256 == hashlib.sha256(dumped).digest()
    assert response.nar_size == len(dumped)


@pytest.mark.parametrize("family", FAMILIES)
def test_calculate_nar_of_missing_contents(served: Served, family: Family) -> None:
    node = FileNode(b"f", Digest.of(b"absent"), 6)
    error = _error(lambda: served.stub(family).CalculateNAR(node_to_proto(node, family)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_health_and_reflection_list_the_pathinfo_services(served: Served) -> None:
    names = {f"{family.value}.store.v1.PathInfoService" for family in Family}
    checker = health_pb2_grpc.HealthStub(served.channel)
    for name in names:
        response = checker.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]))
    assert names <= {s.name for s in response.list_services_response.service}


def test_client_put_checks_contents_through_the_server(served: Served) -> None:
    client = GrpcPathInfoService(served.url, Family.SNIX)
    try:
        info = full_info(served.blobs, served.directories)
        assert client.put(info) == info
        assert client.get(info.path.digest) == info
        stored_elsewhere = full_info(MemoryBlobService(), MemoryDirectoryService(), "elsewhere")
        missing = dataclasses.replace(
            stored_elsewhere,
            node=Directory.of([FileNode(b"f", Digest.of(b"nowhere"), 7)]).node(
                stored_elsewhere.path.basename.encode()
            ),
        )
        with pytest.raises(FailedPreconditionError, match="is not in the castore"):
            client.put(missing)
    finally:
        client.close()


def test_nar_hash_helper_matches_calculate(served: Served) -> None:
    info = full_info(served.blobs, served.directories)
    response = served.stub(Family.TVIX).CalculateNAR(node_to_proto(info.node))
    assert (response.nar_sha256, response.nar_size) == nar_hash(
        info.node, served.blobs, served.directories
    )

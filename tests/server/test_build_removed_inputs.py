"""A warm input tree that loses a blob or a directory from the store is missing again.

Warm builds skip walking an input tree the materialisation cache holds while
the store has removed nothing since it was last found complete. These tests
remove objects from real removable backends behind a real server after warm
builds, and check that the next build reports exactly what went missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.composition import Composition, Registry
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode
from builder.castore.wire import Family
from builder.executor.config import BuildConfig
from builder.executor.request import BuildRequest, Constraints, request_to_proto
from builder.executor.service import BuildService
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.server.app import create_server
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.results.memory import MemoryResultCache
from builder.store.store import Store
from sandbox import Launcher
from tests.requirements import require_root


@dataclass
class Served:
    stub: snix_rpc.BuildServiceStub
    blobs: MemoryBlobService
    directories: SqliteDirectoryService
    service: BuildService
    tree: DirectoryNode


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    require_root("the sandbox launcher runs builds as build users")
    with Launcher() as started:
        yield started


@pytest.fixture
def served(tmp_path: Path, launcher: Launcher) -> Iterator[Served]:
    blobs, directories = MemoryBlobService(), SqliteDirectoryService(tmp_path / "dirs.sqlite")
    pathinfos = SqlitePathInfoService(tmp_path / "pathinfo.sqlite")
    store = Store(blobs, directories, pathinfos, MemoryResultCache(), Composition({}, Registry()))
    source = tmp_path / "src"
    for package in ("a", "b"):
        (source / package / "lib").mkdir(parents=True)
        (source / package / "lib" / "data").write_text(f"data of {package}\n")
        (source / package / "top").write_text(f"top of {package}\n")
    tree = ingest_path(source, blobs, directories, b"aaa-src")
    assert isinstance(tree, DirectoryNode)
    config = BuildConfig(work_dir=tmp_path / "work", result_cache=False)
    service = BuildService(config, blobs, directories, launcher, store.results)
    socket = tmp_path / "builder.sock"
    bound = create_server(store, service, [f"grpc+unix://{socket}"])
    bound.server.start()
    channel = grpc.insecure_channel(f"unix:{socket}")
    try:
        yield Served(snix_rpc.BuildServiceStub(channel), blobs, directories, service, tree)
    finally:
        channel.close()
        bound.server.stop(5).wait()
        service.close()
        pathinfos.close()
        directories.close()


def _build(served: Served, tag: str) -> grpc.RpcError | None:
    """Builds reading every file of the input; the error, if it failed."""
    request = BuildRequest(
        inputs=(served.tree,),
        command_args=("/bin/sh", "-c", f"cat /nix/store/aaa-src/*/lib/data > /nix/store/{tag}"),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=(f"nix/store/{tag}",),
        environment=(("PATH", b"/bin"),),
        constraints=Constraints(system="x86_64-linux", provide_bin_sh=True),
    )
    try:
        served.stub.DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    except grpc.RpcError as error:
        return error
    return None


def _warm(served: Served) -> None:
    """Two builds: the first fills the cache, the second finds the tree complete there."""
    assert _build(served, "first") is None
    assert _build(served, "second") is None
    epoch = (served.blobs.removal_epoch(), served.directories.removal_epoch())
    assert served.service.cache.complete_at(served.tree) == epoch


def _assert_missing(error: grpc.RpcError | None, what: str) -> None:
    assert error is not None, "the build ran without its input"
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert what in error.details()


def test_a_blob_removed_after_a_warm_build_is_reported_missing(served: Served) -> None:
    _warm(served)
    lib = served.directories.get(served.tree.digest)
    assert lib is not None
    package_b = served.directories.get(lib.directories[1].digest)
    assert package_b is not None
    (top,) = package_b.files
    assert served.blobs.remove(top.digest)
    _assert_missing(_build(served, "third"), f"blob {top.digest}")
    _assert_missing(_build(served, "fourth"), f"blob {top.digest}")


def test_a_directory_removed_after_a_warm_build_is_reported_missing(served: Served) -> None:
    _warm(served)
    root = served.directories.get(served.tree.digest)
    assert root is not None
    package_a = served.directories.get(root.directories[0].digest)
    assert package_a is not None
    lib = package_a.directories[0]
    assert served.directories.remove(lib.digest)
    _assert_missing(_build(served, "third"), f"directory {lib.digest}")


def test_the_root_directory_removed_after_a_warm_build_is_reported_missing(
    served: Served,
) -> None:
    _warm(served)
    assert served.directories.remove(served.tree.digest)
    _assert_missing(_build(served, "third"), f"directory {served.tree.digest}")


def test_a_tree_found_complete_again_is_trusted_again(served: Served) -> None:
    """A removal elsewhere in the store costs one walk, then the tree is skipped again."""
    _warm(served)
    writer = served.blobs.open_write()
    writer.write(b"not part of the input\n")
    unrelated = writer.close()
    assert served.blobs.remove(unrelated)
    assert _build(served, "third") is None
    epoch = (served.blobs.removal_epoch(), served.directories.removal_epoch())
    assert served.service.cache.complete_at(served.tree) == epoch

"""Copying what one castore lacks from another, between local backends and real servers.

Servers run with and without the batched blob calls, so that both the batched
path and the fallback to plain castore calls (what a Tvix or Snix server
offers) carry the same trees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from builder.castore.blobs.batches import SMALL_BLOB_SIZE
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.copying import Castore, Copied, copy_missing, copy_missing_directories
from builder.castore.directories.cache import CacheDirectoryService
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryPresence
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs import fetch_closure
from builder.castore.fs.ingest import ingest_path
from builder.castore.grpc.channel import open_channel
from builder.castore.nodes import DirectoryNode
from builder.castore.wire import Family
from builder.errors import IntegrityError
from builder.proto.builder.v1 import blob_batches_pb2, blob_batches_pb2_grpc
from builder.server.castore_server import create_castore_server

KINDS = ["memory", "fs-sqlite", "grpc", "grpc-plain"]


@contextmanager
def castore(kind: str, tmp: Path) -> Iterator[Castore]:
    tmp.mkdir()
    if kind == "memory":
        yield Castore(MemoryBlobService(), MemoryDirectoryService())
        return
    local = Castore(FsBlobService(tmp / "blobs"), SqliteDirectoryService(tmp / "dirs.sqlite"))
    if kind == "fs-sqlite":
        try:
            yield local
        finally:
            local.directories.close()
        return
    bound = create_castore_server(
        local.blobs,
        local.directories,
        [f"grpc+unix://{tmp / 'castore.sock'}"],
        max_workers=8,
        extensions=kind == "grpc",
    )
    bound.server.start()
    url = bound.addresses[0]
    client = Castore(GrpcBlobService(url, Family.SNIX), GrpcDirectoryService(url, Family.SNIX))
    try:
        yield client
    finally:
        client.blobs.close()
        client.directories.close()
        bound.server.stop(None).wait()
        local.directories.close()


def make_tree(root: Path) -> None:
    """Small files in nested and shared subtrees, one empty file and one large file."""
    for d in range(4):
        for f in range(30):
            path = root / f"d{d}" / "sub" / f"f{f}"
            path.parent.mkdir(parents=True, exist_ok=True)
            same = (root / "d0/sub/f0").read_bytes() if d == 3 else None
            path.write_bytes(same or os.urandom(100 + f * 10))
    (root / "shared-a" / "x").mkdir(parents=True)
    (root / "shared-b" / "x").mkdir(parents=True)
    for side in ("shared-a", "shared-b"):
        (root / side / "x" / "same").write_bytes(b"same bytes")
    (root / "empty").write_bytes(b"")
    (root / "large").write_bytes(os.urandom(SMALL_BLOB_SIZE + 12345))


def holds_tree(side: Castore, root: DirectoryNode) -> bool:
    closure = fetch_closure(root.digest, side.directories)
    files = {f.digest: f.size for d in closure.values() for f in d.files}
    for digest, size in files.items():
        reader = side.blobs.open_read(digest)
        if reader is None:
            return False
        with reader:
            if len(reader.read()) != size:
                return False
    return True


PAIRS = [
    ("fs-sqlite", "grpc"),
    ("grpc", "fs-sqlite"),
    ("fs-sqlite", "grpc-plain"),
    ("grpc-plain", "memory"),
    ("memory", "fs-sqlite"),
    ("grpc", "grpc-plain"),
]


@pytest.mark.parametrize(("source_kind", "target_kind"), PAIRS)
def test_copies_what_is_missing_once(source_kind: str, target_kind: str, tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    make_tree(tmp_path / "tree")
    with ExitStack() as stack:
        source = stack.enter_context(castore(source_kind, tmp_path / "source"))
        target = stack.enter_context(castore(target_kind, tmp_path / "target"))
        root = ingest_path(tmp_path / "tree", source.blobs, source.directories)
        assert isinstance(root, DirectoryNode)
        closure = fetch_closure(root.digest, source.directories)
        blobs = {f.digest: f.size for d in closure.values() for f in d.files}

        first = copy_missing([root], source, target)
        assert (first.blobs, first.bytes, first.directories) == (
            len(blobs),
            sum(blobs.values()),
            len(closure),
        )
        assert holds_tree(target, root)
        assert str(copy_missing([root], source, target)) == str(Copied())


@pytest.mark.parametrize("target_kind", ["grpc", "grpc-plain", "fs-sqlite"])
def test_only_the_missing_part_travels(target_kind: str, tmp_path: Path) -> None:
    (tmp_path / "tree" / "old").mkdir(parents=True)
    (tmp_path / "tree" / "old" / "kept").write_bytes(b"kept bytes")
    with ExitStack() as stack:
        source = stack.enter_context(castore("fs-sqlite", tmp_path / "source"))
        target = stack.enter_context(castore(target_kind, tmp_path / "target"))
        old = ingest_path(tmp_path / "tree" / "old", source.blobs, source.directories)
        copy_missing([old], source, target)
        (tmp_path / "tree" / "new").write_bytes(b"new bytes")
        root = ingest_path(tmp_path / "tree", source.blobs, source.directories)
        if isinstance(target.directories, DirectoryPresence):
            assert target.directories.missing([root.digest, old.digest]) == [root.digest]
        copied = copy_missing([root], source, target)
        assert str(copied) == "1 blobs (9 bytes) and 1 directories"
        assert holds_tree(target, root)


@pytest.mark.parametrize("source_kind", ["grpc", "grpc-plain", "memory"])
def test_what_the_source_lacks_is_left_out(source_kind: str, tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a").write_bytes(b"a bytes")
    elsewhere = Castore(MemoryBlobService(), MemoryDirectoryService())
    root = ingest_path(tmp_path / "tree", elsewhere.blobs, elsewhere.directories)
    with ExitStack() as stack:
        source = stack.enter_context(castore(source_kind, tmp_path / "source"))
        target = stack.enter_context(castore("memory", tmp_path / "target"))
        assert str(copy_missing([root], source, target)) == str(Copied())
        assert target.directories.get(root.digest) is None


def test_a_server_without_batches_answers_unimplemented(tmp_path: Path) -> None:
    """The fallback is real: the plain server refuses the batched calls the client probes with."""
    with castore("grpc-plain", tmp_path / "plain") as plain:
        assert isinstance(plain.blobs, GrpcBlobService)
        channel = open_channel(plain.blobs.url)
        try:
            stub = blob_batches_pb2_grpc.BlobBatchesStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.FindMissingBlobs(blob_batches_pb2.FindMissingBlobsRequest())
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            channel.close()


@pytest.mark.parametrize("target_kind", ["grpc", "memory"])
def test_a_corrupt_source_blob_is_refused(target_kind: str, tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a").write_bytes(b"genuine bytes")
    with ExitStack() as stack:
        source = stack.enter_context(castore("fs-sqlite", tmp_path / "source"))
        target = stack.enter_context(castore(target_kind, tmp_path / "target"))
        root = ingest_path(tmp_path / "tree", source.blobs, source.directories)
        assert isinstance(source.blobs, FsBlobService)
        closure = fetch_closure(root.digest, source.directories)
        (file,) = [f for d in closure.values() for f in d.files]
        stored = Path(source.blobs.local_path(file.digest))
        stored.chmod(0o644)
        stored.write_bytes(b"rotten  bytes")
        with pytest.raises(IntegrityError, match="corrupt"):
            copy_missing([root], source, target)
        assert not target.blobs.has(file.digest)
        assert target.directories.get(root.digest) is None


@pytest.mark.parametrize("near_kind", ["memory", "fs-sqlite"])
def test_a_near_cache_is_filled_with_only_what_it_lacks(near_kind: str, tmp_path: Path) -> None:
    """A near/far directory pair copies through the same path: only absent directories move."""
    (tmp_path / "tree" / "old" / "deep").mkdir(parents=True)
    (tmp_path / "tree" / "old" / "deep" / "kept").write_bytes(b"kept bytes")
    with ExitStack() as stack:
        far = stack.enter_context(castore("grpc", tmp_path / "far"))
        near = stack.enter_context(castore(near_kind, tmp_path / "near"))
        old = ingest_path(tmp_path / "tree" / "old", far.blobs, far.directories)
        assert (
            copy_missing_directories(
                old.digest, fetch_closure(old.digest, far.directories), near.directories
            )
            == 2
        )
        (tmp_path / "tree" / "new").mkdir()
        root = ingest_path(tmp_path / "tree", far.blobs, far.directories)
        pair = CacheDirectoryService(near.directories, far.directories)
        assert pair.get(root.digest) is not None
        assert pair.near_counts.misses == 1
        assert len(fetch_closure(root.digest, near.directories)) == 4
        assert (
            copy_missing_directories(
                root.digest, fetch_closure(root.digest, far.directories), near.directories
            )
            == 0
        )

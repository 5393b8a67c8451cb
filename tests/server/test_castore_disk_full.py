"""A store on a full disk: RESOURCE_EXHAUSTED naming the store, nothing partial, still serving.

The data directory is a small tmpfs mounted for the test (root is required,
and its absence is a failure, not a skip).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.wire import Family
from builder.errors import ResourceExhaustedError
from builder.server.castore_server import create_castore_server
from tests.requirements import require_root

SPACE = 4 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    require_root("mounting a small tmpfs")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SPACE}", "tmpfs", str(mountpoint)], check=True
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names]


def _temporaries(blob_root: Path) -> list[Path]:
    return _files(blob_root / "tmp")


def _fill(path: Path) -> None:
    """Take every free block, so that the next write finds the disk full."""
    with open(path, "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * (64 << 10))
                filler.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_put_larger_than_the_disk_is_resource_exhausted(small_disk: Path) -> None:
    blobs = FsBlobService(small_disk / "blobs")
    directories = SqliteDirectoryService(small_disk / "dirs.sqlite")
    bound = create_castore_server(
        blobs, directories, [f"grpc+unix://{small_disk / 'castore.sock'}"], max_workers=4
    )
    bound.server.start()
    channel = open_channel(bound.addresses[0])
    rpc = castore_rpc(Family.TVIX)
    stub = rpc.blobstore_grpc.BlobServiceStub(channel)
    try:
        piece = os.urandom(256 << 10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Put(
                iter(rpc.blobstore.BlobChunk(data=piece) for _ in range(2 * SPACE // len(piece)))
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(small_disk / "blobs") in (caught.value.details() or "")
        assert "out of space" in (caught.value.details() or "")
        assert _temporaries(small_disk / "blobs") == []

        small = stub.Put(iter([rpc.blobstore.BlobChunk(data=b"still serving")]))
        assert [m.data for m in stub.Read(rpc.blobstore.ReadBlobRequest(digest=small.digest))] == [
            b"still serving"
        ]
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        bound.server.stop(None).wait()
        directories.close()
        blobs.close()


def test_directory_put_on_a_full_disk_stores_no_row(small_disk: Path) -> None:
    database = small_disk / "dirs.sqlite"
    directories = SqliteDirectoryService(database)
    bound = create_castore_server(
        FsBlobService(small_disk / "blobs"),
        directories,
        [f"grpc+unix://{small_disk / 'castore.sock'}"],
        max_workers=4,
    )
    bound.server.start()
    channel = open_channel(bound.addresses[0])
    rpc = castore_rpc(Family.TVIX)
    stub = rpc.directory_grpc.DirectoryServiceStub(channel)
    symlink = Family.TVIX.castore.SymlinkNode
    try:
        _fill(small_disk / "filler")
        big = Family.TVIX.castore.Directory(
            symlinks=[symlink(name=b"l%05d" % i, target=b"t" * 200) for i in range(20_000)]
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Put(iter([big]))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(database) in (caught.value.details() or "")
        os.unlink(small_disk / "filler")
        with sqlite3.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM directories").fetchone()[0] == 0
        leaf = Family.TVIX.castore.Directory(symlinks=[symlink(name=b"a", target=b"b")])
        assert stub.Put(iter([leaf])).root_digest
    finally:
        channel.close()
        bound.server.stop(None).wait()
        directories.close()


def test_castore_import_of_a_large_file_on_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    """The kernel-copy path: RESOURCE_EXHAUSTED from the command, no temporary file left."""
    source = tmp_path / "big"
    source.write_bytes(os.urandom(2 * SPACE))
    result = subprocess.run(
        [sys.executable, "-m", "builder", "castore", "import", str(source)],
        env={**os.environ, "BUILDER_DATA_DIR": str(small_disk)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"blob store {small_disk.resolve() / 'blobs'} is out of space" in result.stderr
    assert "Traceback" not in result.stderr
    assert _temporaries(small_disk / "blobs") == []


def test_ingest_of_small_files_on_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    """The bare-syscall path: the error names the store, the hashing thread is gone."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        (tree / f"f{i}").write_bytes(os.urandom(1 << 20))
    blobs = FsBlobService(small_disk / "blobs")
    directories = SqliteDirectoryService(small_disk / "dirs.sqlite")
    try:
        with pytest.raises(ResourceExhaustedError, match="out of space"):
            ingest_path(tree, blobs, directories, b"tree")
        assert _temporaries(small_disk / "blobs") == []
        assert not [t for t in threading.enumerate() if t.name == "copy-hash"]
        with sqlite3.connect(small_disk / "dirs.sqlite") as conn:
            assert conn.execute("SELECT count(*) FROM directories").fetchone()[0] == 0
    finally:
        directories.close()
        blobs.close()

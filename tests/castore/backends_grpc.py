"""The gRPC client backends, each talking to our own server over a real socket.

Every combination the product supports on the wire is covered once: both
families, unix and TCP listeners, and fs/sqlite as well as memory behind the
server, so the contract suites exercise the servicers and clients together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.wire import Family
from builder.server.castore_server import create_castore_server


@contextmanager
def serving(
    tmp: Path, blobs: BlobService, directories: DirectoryService, transport: str
) -> Iterator[str]:
    """Run a castore server over the given stores and yield its URL."""
    listen = (
        f"grpc+unix://{tmp / 'castore.sock'}" if transport == "unix" else "grpc+http://127.0.0.1:0"
    )
    bound = create_castore_server(blobs, directories, [listen], max_workers=8)
    bound.server.start()
    try:
        yield bound.addresses[0]
    finally:
        bound.server.stop(None).wait()
        blobs.close()
        directories.close()


def _blob_backend(
    transport: str, family: Family, store: str
) -> Callable[[Path], AbstractContextManager[BlobService]]:
    @contextmanager
    def factory(tmp: Path) -> Iterator[BlobService]:
        blobs = FsBlobService(tmp / "blobs") if store == "fs" else MemoryBlobService()
        with serving(tmp, blobs, MemoryDirectoryService(), transport) as url:
            client = GrpcBlobService(url, family)
            try:
                yield client
            finally:
                client.close()

    return factory


def _directory_backend(
    transport: str, family: Family, store: str
) -> Callable[[Path], AbstractContextManager[DirectoryService]]:
    @contextmanager
    def factory(tmp: Path) -> Iterator[DirectoryService]:
        directories: DirectoryService = (
            SqliteDirectoryService(tmp / "dirs.sqlite")
            if store == "sqlite"
            else MemoryDirectoryService()
        )
        with serving(tmp, MemoryBlobService(), directories, transport) as url:
            client = GrpcDirectoryService(url, family)
            try:
                yield client
            finally:
                client.close()

    return factory


BLOB_BACKENDS = {
    "grpc-unix-tvix-fs": _blob_backend("unix", Family.TVIX, "fs"),
    "grpc-tcp-snix-memory": _blob_backend("tcp", Family.SNIX, "memory"),
}

DIRECTORY_BACKENDS = {
    "grpc-unix-tvix-sqlite": _directory_backend("unix", Family.TVIX, "sqlite"),
    "grpc-tcp-snix-memory": _directory_backend("tcp", Family.SNIX, "memory"),
}

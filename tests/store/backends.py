"""Every PathInfo backend the contract suite runs against.

Each entry is a factory taking a fresh temporary directory and returning a
context manager that yields a ``PathInfoBackend``: the service under test,
the castore its records' contents must be in (a server checks them), and for
durable backends a way to open the same records again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.wire import Family
from builder.server.castore_server import create_castore_server
from builder.store.pathinfos.grpc import GrpcPathInfoService
from builder.store.pathinfos.memory import MemoryPathInfoService
from builder.store.pathinfos.objectstore import ObjectStorePathInfoService
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.service import PathInfoService
from tests.castore.backends_objectstore import new_s3_url, s3_options


@dataclass
class PathInfoBackend:
    service: PathInfoService
    blobs: BlobService
    directories: DirectoryService
    reopen: Callable[[], PathInfoService] | None = None


PathInfoFactory = Callable[[Path], AbstractContextManager[PathInfoBackend]]


@contextmanager
def _local(open_service: Callable[[], PathInfoService], durable: bool) -> Iterator[PathInfoBackend]:
    service = open_service()
    try:
        yield PathInfoBackend(
            service,
            MemoryBlobService(),
            MemoryDirectoryService(),
            open_service if durable else None,
        )
    finally:
        service.close()


def _grpc(family: Family) -> PathInfoFactory:
    """A client of a real server on a unix socket, records kept in SQLite behind it."""

    @contextmanager
    def factory(tmp: Path) -> Iterator[PathInfoBackend]:
        blobs, directories = MemoryBlobService(), MemoryDirectoryService()
        pathinfos = SqlitePathInfoService(tmp / "served-pathinfo.sqlite")
        listen = f"grpc+unix://{tmp / 'store.sock'}"
        bound = create_castore_server(
            blobs, directories, [listen], max_workers=8, pathinfos=pathinfos
        )
        bound.server.start()
        url = bound.addresses[0]
        client = GrpcPathInfoService(url, family)
        try:
            yield PathInfoBackend(
                client, blobs, directories, lambda: GrpcPathInfoService(url, family)
            )
        finally:
            client.close()
            bound.server.stop(None).wait()
            pathinfos.close()

    return factory


def _s3(tmp: Path) -> AbstractContextManager[PathInfoBackend]:
    url, options = new_s3_url("store"), s3_options()
    return _local(lambda: ObjectStorePathInfoService(url, options), durable=True)


PATHINFO_BACKENDS: dict[str, PathInfoFactory] = {
    "memory": lambda tmp: _local(MemoryPathInfoService, durable=False),
    "sqlite": lambda tmp: _local(
        lambda: SqlitePathInfoService(tmp / "pathinfo.sqlite"), durable=True
    ),
    "sqlite-memory": lambda tmp: _local(lambda: SqlitePathInfoService(":memory:"), durable=False),
    "objectstore-memory": lambda tmp: _local(
        lambda: ObjectStorePathInfoService("memory://"), durable=False
    ),
    "objectstore-file": lambda tmp: _local(
        lambda: ObjectStorePathInfoService((tmp / "objectstore").as_uri()), durable=True
    ),
    "objectstore-s3": _s3,
    "grpc-unix-tvix": _grpc(Family.TVIX),
    "grpc-unix-snix": _grpc(Family.SNIX),
}

# Those whose records outlive the service object: opened again, they are still there.
DURABLE_BACKENDS = frozenset(
    {"sqlite", "objectstore-file", "objectstore-s3", "grpc-unix-tvix", "grpc-unix-snix"}
)

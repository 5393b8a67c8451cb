"""Every result cache backend the contract suite runs against.

Each entry is a factory taking a fresh temporary directory and returning a
context manager that yields a ``ResultBackend``: the cache under test and, for
durable backends, a way to open the same entries again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.server.castore_server import create_castore_server
from builder.store.results.grpc import GrpcResultCache
from builder.store.results.memory import MemoryResultCache
from builder.store.results.objectstore import ObjectStoreResultCache
from builder.store.results.service import ResultCache
from builder.store.results.sqlite import SqliteResultCache
from tests.castore.backends_objectstore import new_s3_url, s3_options


@dataclass
class ResultBackend:
    cache: ResultCache
    reopen: Callable[[], ResultCache] | None = None


ResultFactory = Callable[[Path], AbstractContextManager[ResultBackend]]


@contextmanager
def _local(open_cache: Callable[[], ResultCache], durable: bool) -> Iterator[ResultBackend]:
    cache = open_cache()
    try:
        yield ResultBackend(cache, open_cache if durable else None)
    finally:
        cache.close()


@contextmanager
def _grpc(tmp: Path) -> Iterator[ResultBackend]:
    """A client of a real castore server on a unix socket, entries kept in SQLite behind it."""
    served = SqliteResultCache(tmp / "served-results.sqlite")
    bound = create_castore_server(
        MemoryBlobService(),
        MemoryDirectoryService(),
        [f"grpc+unix://{tmp / 'store.sock'}"],
        max_workers=8,
        results=served,
    )
    bound.server.start()
    url = bound.addresses[0]
    client = GrpcResultCache(url)
    try:
        yield ResultBackend(client, lambda: GrpcResultCache(url))
    finally:
        client.close()
        bound.server.stop(None).wait()
        served.close()


def _s3(tmp: Path) -> AbstractContextManager[ResultBackend]:
    url, options = new_s3_url("results"), s3_options()
    return _local(lambda: ObjectStoreResultCache(url, options), durable=True)


RESULT_BACKENDS: dict[str, ResultFactory] = {
    "memory": lambda tmp: _local(MemoryResultCache, durable=False),
    "sqlite": lambda tmp: _local(lambda: SqliteResultCache(tmp / "results.sqlite"), durable=True),
    "sqlite-memory": lambda tmp: _local(lambda: SqliteResultCache(":memory:"), durable=False),
    "objectstore-memory": lambda tmp: _local(
        lambda: ObjectStoreResultCache("memory://"), durable=False
    ),
    "objectstore-file": lambda tmp: _local(
        lambda: ObjectStoreResultCache((tmp / "objectstore").as_uri()), durable=True
    ),
    "objectstore-s3": _s3,
    "grpc-unix": _grpc,
}

# Those whose entries outlive the cache object: opened again, they are still there.
DURABLE_BACKENDS = frozenset({"sqlite", "objectstore-file", "objectstore-s3", "grpc-unix"})

"""Every blob and directory backend the contract suites run against.

Each entry is a factory taking a fresh temporary directory and returning a
context manager that yields a ready service; backends that need a server
(gRPC, S3) start it inside the context and stop it on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from builder.castore.blobs.combined import CombinedBlobService
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.directories.cache import CacheDirectoryService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService

BlobFactory = Callable[[Path], AbstractContextManager[BlobService]]
DirectoryFactory = Callable[[Path], AbstractContextManager[DirectoryService]]


@contextmanager
def _closing(service):  # type: ignore[no-untyped-def]
    try:
        yield service
    finally:
        service.close()


BLOB_BACKENDS: dict[str, BlobFactory] = {
    "memory": lambda tmp: _closing(MemoryBlobService()),
    "fs": lambda tmp: _closing(FsBlobService(tmp / "blobs")),
    "combined": lambda tmp: _closing(
        CombinedBlobService(MemoryBlobService(), FsBlobService(tmp / "far"))
    ),
}

DIRECTORY_BACKENDS: dict[str, DirectoryFactory] = {
    "memory": lambda tmp: _closing(MemoryDirectoryService()),
    "sqlite": lambda tmp: _closing(SqliteDirectoryService(tmp / "dirs.sqlite")),
    "sqlite-memory": lambda tmp: _closing(SqliteDirectoryService(":memory:")),
    "cache": lambda tmp: _closing(
        CacheDirectoryService(MemoryDirectoryService(), SqliteDirectoryService(tmp / "far.db"))
    ),
}


def _merge(module_name: str) -> None:
    import importlib

    module = importlib.import_module(module_name)
    BLOB_BACKENDS.update(module.BLOB_BACKENDS)
    DIRECTORY_BACKENDS.update(module.DIRECTORY_BACKENDS)


def _iter_extra() -> Iterator[str]:
    here = Path(__file__).parent
    for path in sorted(here.glob("backends_*.py")):
        yield f"tests.castore.{path.stem}"


for _name in _iter_extra():
    _merge(_name)

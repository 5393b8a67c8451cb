"""The BlobService contract every blob backend implements.

Reads and writes are streams so that no backend ever needs a whole blob in
memory; a writer learns the digest only when it is closed, and a blob becomes
visible to readers only then (and only if complete).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from builder.castore.digest import Digest

READ_CHUNK_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """One content-defined chunk of a blob, itself readable by its digest."""

    digest: Digest
    size: int


class BlobWriter(Protocol):
    """A blob being written; ``close`` commits it, ``abort`` discards it."""

    def write(self, data: bytes | memoryview) -> int: ...

    def close(self) -> Digest: ...

    def abort(self) -> None: ...


@runtime_checkable
class BlobService(Protocol):
    def has(self, digest: Digest) -> bool:
        """Whether the blob (or a chunk known to this service) can be read."""
        ...

    def open_read(self, digest: Digest) -> BinaryIO | None:
        """A seekable reader, or None when the digest is unknown."""
        ...

    def open_write(self) -> BlobWriter: ...

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        """The blob's chunks in order; [] means 'read it whole'; None if unknown."""
        ...

    def close(self) -> None:
        """Release connections and handles; the service is not used afterwards."""
        ...


HostFileImport = Callable[[int], tuple[Digest, int]]
"""Stores the host file open as the descriptor given (read from its start), returning its
digest and size; the caller keeps the descriptor, so what it learnt from ``fstat`` describes
the very file stored."""


@runtime_checkable
class HostFileImporter(Protocol):
    """A blob service that stores host files itself, cheaper than streaming them in.

    ``import_files`` opens a batch whose blobs become visible (and durable)
    together when it ends, so that a tree of many small files pays for making
    its blobs durable once rather than once per file. A batch imports files
    by descriptor, which lets a caller stat, look up and store one and the
    same file even while names in the tree are being swapped.
    """

    def import_file(self, src: int) -> tuple[Digest, int]: ...

    def import_files(self) -> AbstractContextManager[HostFileImport]: ...


@runtime_checkable
class BatchBlobWriter(Protocol):
    """A blob service that makes many streamed blobs durable together, cheaper than one by one.

    ``write_batch`` yields an ``open_write`` whose blobs become visible (and
    durable) together when the batch ends; a batch that fails stores none of
    them. A caller must not store anything referring to them before it ends.
    """

    def write_batch(self) -> AbstractContextManager[Callable[[], BlobWriter]]: ...


@runtime_checkable
class VerifiedBlobPut(Protocol):
    """A blob service that stores many small blobs already in memory, cheaper than writers.

    The caller has checked every digest against its bytes (as a batched call
    does before storing anything); the blobs become visible and durable
    together, or none of them.
    """

    def put_verified(self, blobs: Sequence[tuple[Digest, bytes]]) -> None: ...


@runtime_checkable
class LocalBlobFiles(Protocol):
    """A blob service keeping each blob as a local file that is read-only and never changes.

    Callers on the same host may then copy, reflink or hardlink a blob's file
    instead of streaming its bytes through ``open_read``.
    """

    root: Path
    """The directory holding every blob file (at any depth), for same-filesystem checks."""

    def local_path(self, digest: Digest) -> str:
        """Where the blob's file is, or would be; cheap enough to ask once per file."""
        ...

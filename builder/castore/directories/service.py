"""The DirectoryService contract every directory backend implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from builder.castore.digest import Digest
from builder.castore.directory import Directory


class DirectoryPutter(Protocol):
    """Receives a closure leaves first; nothing is stored until ``close`` succeeds."""

    def put(self, directory: Directory) -> None: ...

    def close(self) -> Digest:
        """Validate the whole closure, store it atomically and return the root digest."""
        ...


@runtime_checkable
class DirectoryService(Protocol):
    def get(self, digest: Digest) -> Directory | None: ...

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        """The root, then its descendants breadth-first, each once.

        Raises NotFoundError when the root is unknown.
        """
        ...

    def put(self, directory: Directory) -> Digest:
        """Store one directory whose child directories are already stored."""
        ...

    def put_multiple_start(self) -> DirectoryPutter: ...

    def close(self) -> None: ...


@runtime_checkable
class DirectoryPresence(Protocol):
    """A directory service that answers for many directories at once, cheaper than a get each."""

    def missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """The given digests this service has no directory for, in their order."""
        ...

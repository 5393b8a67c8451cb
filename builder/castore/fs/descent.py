"""Walking a directory tree that someone else wrote, one open directory at a time.

A build chooses the shape of what it leaves behind, and a request the shape of
its inputs: a tree may be deeper than the interpreter's recursion limit,
deeper than PATH_MAX lets a path name, and deeper than the open-file limit
allows descriptors for, and any of its names may be swapped for a symlink. So
a walk keeps an explicit stack instead of recursing, reaches every directory
as a name relative to its parent's descriptor with ``O_NOFOLLOW``, and keeps
only the deepest few descriptors of the chain from the root open.

Going back up to a directory whose descriptor was closed reopens it as ``..``
of the child being left, checked by device and inode to be the directory the
walk came down through. That keeps the trees untouched; the alternative,
flattening a tree by renaming deep subdirectories up to its top, would alter
trees that most walkers must only read (an ingested source, an output being
scanned).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from builder.errors import FailedPreconditionError

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Descriptors kept open along the chain (the root's is always among them):
# enough that going up rarely reopens anything, few enough that several
# walks on a thread pool stay far below the usual limit of 1024.
OPEN_LIMIT = 24

Context = TypeVar("Context")
Enter = Callable[[int, Context], Sequence[tuple[bytes, Context]]]
Leave = Callable[[int, bytes, Context], None]


class DirectoryChain:
    """The directories from a root down to the current one, as descriptors where open."""

    def __init__(self, root: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        fd = os.open(root, DIRECTORY_FLAGS)
        self._names: list[bytes] = [b""]
        self._fds: list[int | None] = [fd]
        self._ids = [_identity(fd)]
        self._lowest_open = 1

    @property
    def fd(self) -> int:
        """The current directory; always open."""
        fd = self._fds[-1]
        assert fd is not None
        return fd

    @property
    def depth(self) -> int:
        return len(self._fds) - 1

    def enter(self, name: bytes) -> int:
        """Make the subdirectory ``name`` current; a symlink there is refused, never followed."""
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=self.fd)
        self._names.append(name)
        self._fds.append(fd)
        self._ids.append(_identity(fd))
        if len(self._fds) - self._lowest_open >= OPEN_LIMIT:
            closing = self._fds[self._lowest_open]
            assert closing is not None
            os.close(closing)
            self._fds[self._lowest_open] = None
            self._lowest_open += 1
        return fd

    def leave(self) -> bytes:
        """Go back to the parent (the root cannot be left); the name of the directory left."""
        assert self.depth > 0
        child = self.fd
        parent = len(self._fds) - 2
        try:
            if self._fds[parent] is None:
                fd = os.open(b"..", DIRECTORY_FLAGS, dir_fd=child)
                if _identity(fd) != self._ids[parent]:
                    os.close(fd)
                    raise FailedPreconditionError(
                        f"directory at depth {parent} was moved while it was being walked"
                    )
                self._fds[parent] = fd
                self._lowest_open = parent
        finally:
            os.close(child)
            self._fds.pop()
            self._ids.pop()
        return self._names.pop()

    def close(self) -> None:
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = []

    def __enter__(self) -> DirectoryChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(fd: int) -> tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


def walk(
    root: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    context: Context,
    enter: Enter[Context],
    leave: Leave[Context] | None = None,
) -> None:
    """Depth first from the directory ``root`` (itself never a followed symlink).

    ``enter(fd, context)`` is called once per directory with its open
    descriptor and returns the subdirectories to walk into, each by name with
    the context it is entered with, in the order they are to be walked.
    ``leave(parent_fd, name, context)`` is called once a subdirectory and
    everything below it are done, with its parent's descriptor.
    """
    with DirectoryChain(root) as chain:
        pending: list[list[tuple[bytes, Context]]] = [_reversed(enter(chain.fd, context))]
        contexts = [context]
        while True:
            if pending[-1]:
                name, child = pending[-1].pop()
                chain.enter(name)
                contexts.append(child)
                pending.append(_reversed(enter(chain.fd, child)))
                continue
            pending.pop()
            if not pending:
                return
            left = contexts.pop()
            name = chain.leave()
            if leave is not None:
                leave(chain.fd, name, left)


def _reversed(children: Sequence[tuple[bytes, Context]]) -> list[tuple[bytes, Context]]:
    return list(reversed(children))

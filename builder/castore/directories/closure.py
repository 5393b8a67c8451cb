"""Checks on a directory closure sent leaves first, shared by every backend.

A closure is only stored once it is known to be complete and connected, so a
stream that fails half-way leaves the store exactly as it was.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES
from builder.errors import InvalidArgumentError, NotFoundError

Lookup = Callable[[Digest], Directory | None]


def walk_breadth_first(lookup: Lookup, root: Digest) -> Iterator[Directory]:
    """Root first, then children level by level, each digest once."""
    directory = lookup(root)
    if directory is None:
        raise NotFoundError(f"directory {root} not found")
    seen = {root}
    queue = deque([directory])
    while queue:
        current = queue.popleft()
        yield current
        for child in current.directories:
            if child.digest in seen:
                continue
            seen.add(child.digest)
            found = lookup(child.digest)
            if found is None:
                raise NotFoundError(
                    f"directory {child.digest} (child {child.name!r} of {current.digest}) not found"
                )
            queue.append(found)


def dated_closure(date: Callable[[Digest], Directory | None], named: list[Digest]) -> None:
    """Date every directory in the closures of ``named`` through ``date``, each once.

    ``date`` dates one stored directory now and returns it, or None if it is
    gone: a collection removed it after the put found it, and the put fails
    rather than store a tree with a hole. An explicit stack: the trees come
    from clients.
    """
    seen = set(named)
    stack = list(named)
    while stack:
        digest = stack.pop()
        directory = date(digest)
        if directory is None:
            raise NotFoundError(
                f"directory {digest}, which the put names as stored, was removed while the put "
                "ran; send it again"
            )
        for child in directory.directories:
            if child.digest not in seen:
                seen.add(child.digest)
                stack.append(child.digest)


class ClosureValidator:
    """Accumulates a leaves-to-root stream and checks order, sizes and connectivity."""

    def __init__(self, lookup: Lookup, max_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES) -> None:
        self._lookup = lookup
        self._max_entries = max_entries
        self._received: dict[Digest, Directory] = {}
        self._order: list[Directory] = []

    def add(self, directory: Directory) -> None:
        index = len(self._order)
        if len(directory) > self._max_entries:
            raise InvalidArgumentError(
                f"directory #{index} ({directory.digest}) has {len(directory)} entries, "
                f"more than the limit of {self._max_entries}"
            )
        try:
            directory.validate()
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"directory #{index} ({directory.digest}): {exc}") from exc
        for child in directory.directories:
            known = self._received.get(child.digest)
            if known is None:
                known = self._lookup(child.digest)
            if known is None:
                raise InvalidArgumentError(
                    f"directory #{index} ({directory.digest}): child {child.name!r} refers to "
                    f"directory {child.digest}, which was neither sent before nor stored"
                )
            if known.size != child.size:
                raise InvalidArgumentError(
                    f"directory #{index} ({directory.digest}): child {child.name!r} has size "
                    f"{child.size}, but directory {child.digest} has size {known.size}"
                )
        if directory.digest not in self._received:
            self._received[directory.digest] = directory
            self._order.append(directory)

    def finish(self) -> tuple[Digest, list[Directory], list[Digest]]:
        """The root digest, the directories to store (leaves first), and the stored ones named.

        The last are children the stream named without sending, found stored:
        the new closure builds on them and everything under them.
        """
        if not self._order:
            raise InvalidArgumentError("no directories were sent")
        root = self._order[-1]
        reached = {root.digest}
        queue = deque([root])
        while queue:
            for child in queue.popleft().directories:
                if child.digest in self._received and child.digest not in reached:
                    reached.add(child.digest)
                    queue.append(self._received[child.digest])
        for directory in self._order:
            if directory.digest not in reached:
                raise InvalidArgumentError(
                    f"directory {directory.digest} is not connected to the root {root.digest}"
                )
        named = {
            child.digest: None
            for directory in self._order
            for child in directory.directories
            if child.digest not in self._received
        }
        return root.digest, self._order, list(named)


class ValidatingPutter:
    """A DirectoryPutter that commits the validated closure in one call."""

    def __init__(
        self,
        lookup: Lookup,
        commit: Callable[[list[Directory], list[Digest]], None],
        max_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
    ) -> None:
        self._validator = ClosureValidator(lookup, max_entries)
        self._commit = commit
        self._closed = False

    def put(self, directory: Directory) -> None:
        if self._closed:
            raise InvalidArgumentError("putter already closed")
        self._validator.add(directory)

    def close(self) -> Digest:
        if self._closed:
            raise InvalidArgumentError("putter already closed")
        self._closed = True
        root, directories, named = self._validator.finish()
        self._commit(directories, named)
        return root


class ClosureCommitting:
    """The put and traversal half of a DirectoryService, shared by every local backend.

    A backend supplies ``get`` and an atomic ``_commit`` of a validated,
    leaves-first closure, which also dates the closures of the stored
    directories it names as a put of them would (``dated_closure``), so that a
    collection racing the put cannot remove the old tree under the new one;
    single puts and streamed puts then go through the same validation, so no
    backend can accept what another would refuse.
    ``max_entries`` bounds each directory put; a backend may set it per instance.
    """

    max_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES

    def get(self, digest: Digest) -> Directory | None:
        raise NotImplementedError

    def _commit(self, directories: list[Directory], named: list[Digest]) -> None:
        raise NotImplementedError

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        return walk_breadth_first(self.get, digest)

    def put(self, directory: Directory) -> Digest:
        putter = self.put_multiple_start()
        putter.put(directory)
        return putter.close()

    def put_multiple_start(self) -> ValidatingPutter:
        return ValidatingPutter(self.get, self._commit, self.max_entries)

"""Making sure a request's inputs are complete in the store, and not too big, before it runs.

A directory node's ``size`` counts every entry below it, once per place it
occurs: a directory referenced twice is materialised twice. A chain of small
Directory messages each naming its child twice is therefore a few kilobytes
on the wire and exponentially many entries on disk. So the claimed sizes are
checked against the operator's limit before anything is fetched, and the
claim itself is checked against the stored root when it is first fetched;
the store has already checked every child's size against its parent's entry
when the closure was put, so a true root size bounds the whole expansion.

Walking a closure to prove it present costs a decode per directory and a
look-up per blob, which for a big input tree costs more than the build. A
tree whose walk found everything is therefore remembered (by the
materialisation cache, for as long as it holds the tree) together with the
store's removal epochs read before that walk, and is not walked again while
both epochs are unchanged. That is exact, not a heuristic: stores only lose
objects through removals, and a removal moves the epoch of the service it
removes from once the object is gone (``builder.castore.removal``), so an
unchanged epoch means that everything the walk found is still there. Nor can
a removal racing the walk slip through: it either happened before the epochs
were read (then the walk sees it) or moves them after (then the next build
walks again). A service that answers no epoch (a remote store, say) is walked
every time, and so is a directory whose node claims another size than the
one the cache holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.castore.removal import RemovalEpoch
from builder.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

StoreEpoch = tuple[int, int]
"""The removal epochs of a blob service and a directory service, read together."""


class CompleteTrees(Protocol):
    """Remembers directory trees found complete in the store, and at which epoch."""

    def store_epoch(self) -> StoreEpoch | None:
        """The store's removal epochs now, or None when the store cannot tell."""
        ...

    def complete_at(self, node: DirectoryNode) -> StoreEpoch | None: ...

    def mark_complete(self, node: DirectoryNode, epoch: StoreEpoch) -> None: ...


def epoch_reader(
    blobs: BlobService, directories: DirectoryService
) -> Callable[[], StoreEpoch] | None:
    """How to read both services' removal epochs, or None when either cannot tell.

    Decided once per pair of services: asking a runtime protocol costs more
    than reading the epochs.
    """
    if not (isinstance(blobs, RemovalEpoch) and isinstance(directories, RemovalEpoch)):
        return None
    blob_epoch, directory_epoch = blobs.removal_epoch, directories.removal_epoch
    return lambda: (blob_epoch(), directory_epoch())


def check_input_sizes(inputs: tuple[Node, ...], limit: int) -> None:
    """Refuse inputs whose claimed expanded size, alone or together, exceeds ``limit``."""
    total = 0
    for i, node in enumerate(inputs):
        if isinstance(node, DirectoryNode):
            if node.size > limit:
                raise InvalidArgumentError(
                    f"{_where(i, node)}: directory size {node.size} exceeds the limit of "
                    f"{limit} (the server's maximum input size per build)"
                )
            total += node.size
    if total > limit:
        raise InvalidArgumentError(
            f"inputs: directory sizes add up to {total}, more than the limit of {limit} "
            "(the server's maximum input size per build)"
        )


def _where(index: int, node: Node) -> str:
    return f"inputs[{index}] {node.name.decode(errors='replace')}"


def missing_inputs(
    inputs: tuple[Node, ...],
    blobs: BlobService,
    directories: DirectoryService,
    complete: CompleteTrees | None = None,
) -> list[str]:
    """Descriptions of every blob and directory the inputs need but the store lacks.

    With ``complete``, trees it knows complete at the store's current epoch
    are not walked, and trees walked and found complete are marked there.
    """
    missing: list[str] = []
    present: dict[bytes, bool] = {}
    # Read before anything is looked up, and only if a tree could be skipped or
    # marked: a blob found for an earlier file input vouches for the trees that
    # share it, so its look-up must come after the epoch they are marked at.
    epoch: StoreEpoch | None = None
    if complete is not None and any(isinstance(node, DirectoryNode) for node in inputs):
        epoch = complete.store_epoch()

    def has_blob(node: FileNode, where: str, inside: bool = False) -> bool:
        """``inside``: the file is somewhere below the input ``where`` names."""
        found = present.get(node.digest)
        if found is None:
            found = present[node.digest] = blobs.has(node.digest)
            if not found:
                if inside:
                    where = f"{where}/…/{node.name.decode(errors='replace')}"
                missing.append(f"blob {node.digest} ({where})")
        return found

    for i, node in enumerate(inputs):
        where = _where(i, node)
        if isinstance(node, FileNode):
            has_blob(node, where)
        elif isinstance(node, DirectoryNode):
            if epoch is not None and complete is not None and complete.complete_at(node) == epoch:
                continue
            try:
                closure = directories.get_recursive(node.digest)
                root = next(closure)
            except NotFoundError:
                missing.append(f"directory {node.digest} ({where})")
                continue
            # Before descending: a false claim would leave the expansion unbounded.
            if root.size != node.size:
                raise InvalidArgumentError(
                    f"{where}: size is {node.size}, but directory {node.digest} has size "
                    f"{root.size}"
                )
            whole = True
            try:
                for directory in itertools.chain((root,), closure):
                    for file in directory.files:
                        whole = has_blob(file, where, inside=True) and whole
            except NotFoundError as error:
                missing.append(f"{error} ({where})")
                whole = False
            if whole and epoch is not None and complete is not None:
                complete.mark_complete(node, epoch)
    return missing


def require_inputs(
    inputs: tuple[Node, ...],
    blobs: BlobService,
    directories: DirectoryService,
    complete: CompleteTrees | None = None,
) -> None:
    missing = missing_inputs(inputs, blobs, directories, complete)
    if missing:
        shown = "; ".join(missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FailedPreconditionError(f"inputs missing from the store: {shown}{more}")

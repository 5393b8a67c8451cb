"""What a garbage collector needs from a store: what it holds, since when, and removal by age.

A collector marks what its roots reach and removes the rest, but it cannot
stop the world: while it works, clients upload blobs and directory closures
that nothing refers to yet and that a build will use a moment later. So a
removal is always conditional on age: ``remove_untouched`` removes an object
only if it was neither stored nor put again since a cut-off the collector
chose before it began (its start minus a safety margin). A put of an object
already stored counts as touching it, so an uploader told "already have it"
can rely on the object surviving the collection that races it, and so does
telling a client that a blob is stored (``presence_vouched``), since the
client then skips its upload; a directory put naming stored directories
dates their closures, since the new tree builds on them. A backend checks
the time again right before each removal, not only when it listed.

Removals move the removal epoch (``builder.castore.removal``) once the objects
are gone, once per call rather than once per object.

Roots (result-cache entries, PathInfos) record when they were last used, so
that a collector bounding the store evicts the least recently used first.
Recording every use would turn every read into a durable write; a use is
recorded only when the recorded time is older than ``USE_RECORD_INTERVAL``,
which is therefore the resolution of the order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest
from builder.castore.nodes import Node
from builder.castore.removal import RemovalEpoch

USE_RECORD_INTERVAL = 60.0
"""Seconds: a root's last use is written again only once the recorded one is this old."""


def new_epoch() -> int:
    """A fresh removal epoch for a store shared by processes that cannot count together.

    Two collectors incrementing a shared counter without a lock could both
    write the same next value, and a reader would miss the second removal; a
    random 63-bit value differs from every earlier one with overwhelming odds.
    """
    return int.from_bytes(os.urandom(8), "big") >> 1


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A blob or directory as a collector sees it."""

    digest: Digest
    size: int
    """Bytes it accounts for: a blob's length, a directory's encoded message."""
    touched: float
    """Seconds since the Unix epoch when it was stored or last put again."""


@runtime_checkable
class Collectable(RemovalEpoch, Protocol):
    """A blob or directory service that can list what it holds and remove it by age."""

    def stored(self) -> Iterator[StoredObject]:
        """Every object held, in no particular order, without holding them all in memory."""
        ...

    def remove_untouched(self, digests: Sequence[Digest], before: float) -> list[StoredObject]:
        """Remove each of ``digests`` that was neither stored nor put again since ``before``.

        Returns what was removed. The removal epoch moves after the last
        removal, if there was any.
        """
        ...

    def remove_orphans(self, before: float) -> int:
        """Remove parts no object uses any more that are older than ``before``; how many.

        For backends that keep parts beside their objects (the chunks of an
        object store, some shared by several blobs); others have none.
        """
        ...


@runtime_checkable
class Touchable(Protocol):
    """A blob service whose objects a caller can vouch for without putting them again."""

    def touch(self, digest: Digest) -> bool:
        """Date a stored object now, as a put of it would; whether it is stored.

        For whoever takes an object as stored without uploading it (a client
        answered by ``Stat`` or ``FindMissingBlobs``, the import record's
        unchanged files), so that a collection racing it keeps the object, or
        the caller learns it is gone and stores it again.
        """
        ...


def presence_vouched(blobs: BlobService) -> Callable[[Digest], bool]:
    """How to tell a client (or an import) whether a blob is stored, when yes means "do not upload".

    The answer is acted on later, when the client stores a directory naming
    the blob and builds on it; dating the blob now lets the minimum age cover
    that stretch, as it covers an upload.
    """
    return blobs.touch if isinstance(blobs, Touchable) else blobs.has


@dataclass(frozen=True, slots=True)
class UsedRoot:
    """Something that keeps nodes alive (a result-cache entry, a PathInfo) and when it was used."""

    key: bytes
    nodes: tuple[Node, ...]
    last_used: float


@runtime_checkable
class EvictableRoots(Protocol):
    """A record of roots a collector may drop, least recently used first, to bound the store."""

    def used_roots(self) -> Iterator[UsedRoot]: ...

    def evict(self, root: UsedRoot) -> bool:
        """Drop ``root`` unless it was used again since ``root.last_used``; whether it went."""
        ...


class Leases:
    """Nodes that builds in progress in this process use, which a collection must keep.

    A build holds its inputs from before it checks they are present until it
    ends. A collector takes what is held when it marks, and before each batch
    of removals takes (under the same lock that builds hold to register) the
    leases added since, so that a build registered before the batch is
    protected and one registered after it sees the store without the batch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, tuple[Node, ...]] = {}
        self._next = 0
        self._generation = 0

    @contextmanager
    def hold(self, nodes: Iterable[Node]) -> Iterator[None]:
        with self._lock:
            ticket = self._next
            self._next += 1
            self._held[ticket] = tuple(nodes)
        try:
            yield
        finally:
            with self._lock:
                del self._held[ticket]

    @contextmanager
    def frozen(self) -> Iterator[list[Node]]:
        """Hold off new leases for the block; yields the nodes leased since the last freeze."""
        with self._lock:
            since = self._generation
            self._generation = self._next
            held = self._held.items()
            yield [node for ticket, nodes in held if ticket >= since for node in nodes]

    def reset(self) -> list[Node]:
        """Every node held now, and start counting new leases from here (a collection's mark)."""
        with self._lock:
            self._generation = self._next
            return [node for nodes in self._held.values() for node in nodes]

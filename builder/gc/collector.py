"""One garbage collection: mark what the roots reach, evict roots to fit a bound, remove the rest.

Roots come in three kinds. Pins, the leases of builds in progress in this
process, and every object stored or put again within the minimum age are kept
unconditionally: the last of these is what makes a collection safe while
clients upload, since a client uploads blobs and directories before anything
refers to them and builds on them a moment later. Result-cache entries and
PathInfos are kept as long as the store fits the bound: they are taken most
recently used first, and once one would take the store over the bound, it and
every root used before it are evicted (their records deleted, unless used
again meanwhile). Directories stored since the listing are then listed and
walked too, since a client may have stored a tree naming old objects it found
present. Objects no kept root reaches and older than the cut-off are removed,
directories before blobs, in batches.

The store's size is the sum of the sizes of its blobs (their lengths, each
blob once however many trees share it) and directories (their encoded
messages). What an object store keeps beside them (indexes, chunks shared by
blobs) and the databases' own overhead are not counted.

Everything is walked with explicit stacks: directory trees come from clients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from builder.castore.blobs.service import BlobService
from builder.castore.collection import Collectable, EvictableRoots, Leases, UsedRoot
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.errors import FailedPreconditionError, InvalidArgumentError
from builder.gc.pins import Pins
from builder.store.store import Store

logger = logging.getLogger(__name__)

DEFAULT_MIN_AGE = 3600.0
"""Seconds: objects stored or put again more recently than this are never removed.

An hour covers the time between a client uploading a build's inputs and the
build starting to use them (and an object-store upload, which must finish
within it less ten minutes), with room for a slow client; what it costs is
that the store can exceed its bound by what was written in the last hour.
"""

REMOVAL_BATCH = 256
"""Objects per removal call: each call holds off new build leases while it runs."""


@dataclass
class CollectionReport:
    store_bytes_before: int = 0
    store_bytes_after: int = 0
    blobs_removed: int = 0
    blob_bytes_freed: int = 0
    directories_removed: int = 0
    directory_bytes_freed: int = 0
    roots_kept: int = 0
    roots_evicted: int = 0
    duration: float = 0.0

    def as_fields(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class _Marks:
    """What the kept roots reach, and how many bytes of the store that is."""

    blob_sizes: dict[Digest, int]
    directory_sizes: dict[Digest, int]
    directories: DirectoryService
    marked: set[Digest] = field(default_factory=set)
    marked_directories: set[Digest] = field(default_factory=set)
    bytes: int = 0

    def mark(
        self,
        blobs: Iterable[Digest] = (),
        directories: Iterable[Digest] = (),
        nodes: Iterable[Node] = (),
    ) -> list[tuple[bool, Digest]]:
        """Mark ``blobs`` and the closures of ``directories`` and ``nodes``; what was new.

        Returns each newly marked object (whether a directory, its digest), so
        that a trial can be taken back.
        """
        new: list[tuple[bool, Digest]] = []
        stack: list[Digest] = []

        def blob(digest: Digest) -> None:
            size = self.blob_sizes.get(digest)
            if size is not None and digest not in self.marked:
                self.marked.add(digest)
                self.bytes += size
                new.append((False, digest))

        def directory(digest: Digest) -> None:
            # One stored since the listing is walked too: it may refer to listed objects.
            if digest not in self.marked_directories:
                self.marked_directories.add(digest)
                self.bytes += self.directory_sizes.get(digest, 0)
                new.append((True, digest))
                stack.append(digest)

        for digest in blobs:
            blob(digest)
        for digest in directories:
            directory(digest)
        for node in nodes:
            if isinstance(node, FileNode):
                blob(node.digest)
            elif isinstance(node, DirectoryNode):
                directory(node.digest)
        while stack:
            found = self.directories.get(stack.pop())
            if found is None:
                continue
            for child in found.directories:
                directory(child.digest)
            for file in found.files:
                blob(file.digest)
        return new

    def unmark(self, new: list[tuple[bool, Digest]]) -> None:
        for is_directory, digest in new:
            if is_directory:
                self.marked_directories.discard(digest)
                self.bytes -= self.directory_sizes.get(digest, 0)
            else:
                self.marked.discard(digest)
                self.bytes -= self.blob_sizes[digest]


class Collector:
    """Collects one store; the CLI runs it once, a server periodically."""

    def __init__(
        self,
        blobs: BlobService,
        directories: DirectoryService,
        roots: Sequence[EvictableRoots],
        pinned: Callable[[], Iterable[Digest]] = lambda: (),
        leases: Leases | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``pinned`` is asked once per collection; ``clock`` is the time the age is measured by.

        Raises FailedPreconditionError for services that cannot be collected
        (a remote store is collected where it runs).
        """
        for what, service in (("blob", blobs), ("directory", directories)):
            if not isinstance(service, Collectable):
                raise FailedPreconditionError(
                    f"the {what} service {type(service).__name__} cannot be collected here; "
                    "run the collection where the store is (a remote store's own server)"
                )
        self._blobs: Collectable = blobs  # type: ignore[assignment]
        self._directories: Collectable = directories  # type: ignore[assignment]
        self._directory_reader = directories
        self._roots = roots
        self._pinned = pinned
        self._leases = leases
        self._clock = clock

    def collect(
        self,
        max_bytes: int | None = None,
        min_age: float = DEFAULT_MIN_AGE,
        stopping: Callable[[], bool] = lambda: False,
    ) -> CollectionReport:
        """Collect once: ``max_bytes`` bounds the store (None: only unreachable objects go).

        ``stopping`` is asked before each batch of removals; once it says yes
        the collection ends there, as a server being stopped needs it to.
        """
        if max_bytes is not None and max_bytes < 0:
            raise InvalidArgumentError(f"max bytes: {max_bytes} is negative")
        if min_age < 0:
            raise InvalidArgumentError(f"min age: {min_age} seconds is negative")
        started = time.monotonic()
        cutoff = self._clock() - min_age
        held = self._leases.reset() if self._leases is not None else []
        report = CollectionReport()

        young_blobs, blob_sizes = self._listing(self._blobs, cutoff)
        young_directories, directory_sizes = self._listing(self._directories, cutoff)
        report.store_bytes_before = sum(blob_sizes.values()) + sum(directory_sizes.values())

        marks = _Marks(blob_sizes, directory_sizes, self._directory_reader)
        pinned = list(self._pinned())
        # A pinned digest keeps whichever it names: a blob, a directory tree, or both.
        marks.mark([*young_blobs, *pinned], [*young_directories, *pinned], held)
        evicted = self._choose(marks, max_bytes, report)
        for source, root in evicted:
            if source.evict(root):
                report.roots_evicted += 1
            else:
                marks.mark(nodes=root.nodes)
                report.roots_kept += 1

        # Directories stored since the listing may name old objects a client found
        # present and did not upload again; what they reach stays.
        late = [o.digest for o in self._directories.stored() if o.digest not in directory_sizes]
        marks.mark(directories=late)
        for sizes, service, directories in (
            (directory_sizes, self._directories, True),
            (blob_sizes, self._blobs, False),
        ):
            if not self._sweep(marks, sizes, service, cutoff, report, directories, stopping):
                logger.info("garbage collection stopped before its end")
                break
        report.store_bytes_after = (
            report.store_bytes_before - report.blob_bytes_freed - report.directory_bytes_freed
        )
        report.duration = time.monotonic() - started
        logger.info("garbage collection finished", extra=report.as_fields())
        if max_bytes is not None and report.store_bytes_after > max_bytes:
            logger.warning(
                "the store is still over its bound after collection: what is pinned, in use "
                "or younger than the minimum age takes more",
                extra={"store_bytes": report.store_bytes_after, "max_bytes": max_bytes},
            )
        return report

    @staticmethod
    def _listing(service: Collectable, cutoff: float) -> tuple[list[Digest], dict[Digest, int]]:
        """What ``service`` holds younger than ``cutoff``, and the size of everything it holds."""
        young: list[Digest] = []
        sizes: dict[Digest, int] = {}
        for stored in service.stored():
            sizes[stored.digest] = stored.size
            if stored.touched >= cutoff:
                young.append(stored.digest)
        return young, sizes

    def _choose(
        self, marks: _Marks, max_bytes: int | None, report: CollectionReport
    ) -> list[tuple[EvictableRoots, UsedRoot]]:
        """Mark roots most recently used first while the store fits; the rest are to go."""
        roots = [
            (root.last_used, i, root)
            for i, source in enumerate(self._roots)
            for root in source.used_roots()
        ]
        roots.sort(key=lambda entry: (-entry[0], entry[1]))
        evicted: list[tuple[EvictableRoots, UsedRoot]] = []
        for _, index, root in roots:
            if evicted:
                evicted.append((self._roots[index], root))
                continue
            new = marks.mark(nodes=root.nodes)
            if max_bytes is not None and marks.bytes > max_bytes:
                marks.unmark(new)
                evicted.append((self._roots[index], root))
            else:
                report.roots_kept += 1
        return evicted

    def _sweep(
        self,
        marks: _Marks,
        sizes: dict[Digest, int],
        service: Collectable,
        cutoff: float,
        report: CollectionReport,
        directories: bool,
        stopping: Callable[[], bool],
    ) -> bool:
        """Remove what is not marked, batch by batch; whether it went through to the end."""
        marked = marks.marked_directories if directories else marks.marked
        garbage = [digest for digest in sizes if digest not in marked]
        for start in range(0, len(garbage), REMOVAL_BATCH):
            if stopping():
                return False
            batch = garbage[start : start + REMOVAL_BATCH]
            if self._leases is None:
                self._remove(service, batch, cutoff, report, directories)
                continue
            with self._leases.frozen() as leased:
                if leased:
                    marks.mark(nodes=leased)
                batch = [digest for digest in batch if digest not in marked]
                self._remove(service, batch, cutoff, report, directories)
        service.remove_orphans(cutoff)
        return True

    @staticmethod
    def _remove(
        service: Collectable,
        batch: list[Digest],
        cutoff: float,
        report: CollectionReport,
        directories: bool,
    ) -> None:
        removed = service.remove_untouched(batch, cutoff)
        freed = sum(o.size for o in removed)
        if directories:
            report.directories_removed += len(removed)
            report.directory_bytes_freed += freed
        else:
            report.blobs_removed += len(removed)
            report.blob_bytes_freed += freed


def store_collector(
    store: Store,
    results: EvictableRoots,
    pins: Pins,
    leases: Leases | None = None,
    clock: Callable[[], float] = time.time,
) -> Collector:
    """A collector of ``store`` whose roots are ``results``, the store's PathInfos and ``pins``.

    Raises FailedPreconditionError when the store keeps its PathInfos where
    they cannot be listed as roots: collecting without them would remove the
    contents of every store path.
    """
    if not isinstance(store.pathinfos, EvictableRoots):
        raise FailedPreconditionError(
            f"the PathInfo service {type(store.pathinfos).__name__} cannot list its records as "
            "roots; run the collection where the store is"
        )
    return Collector(
        store.blobs,
        store.directories,
        [results, store.pathinfos],
        lambda: [pin.digest for pin in pins.pins()],
        leases,
        clock,
    )

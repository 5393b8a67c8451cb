"""Copying what one castore lacks of some trees from another, whatever the backends are.

Uploading inputs to a remote builder and fetching its outputs back are the
same operation with the sides swapped, and so is filling one local store from
another. Checks are cheap (which blobs are missing, a directory get per level)
while copies carry whole blobs, so copying again what is already there costs
only the checks. Backends that answer for many small blobs at once
(``BlobBatching``, such as a server offering the batched calls) are asked that
way; any other is asked blob by blob.

Blobs go first so that no directory is ever visible on the target before the
contents it names. A directory the target has implies every directory below
it, since directory services store only complete closures, but not the blobs
those reference: every blob is checked on its own. Whatever the source lacks
is left out, so the target's own consumer reports what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from builder.castore.blobs.batches import (
    MAX_BATCH_BYTES,
    SMALL_BLOB_SIZE,
    BlobBatching,
    read_at_most,
    write_each,
)
from builder.castore.blobs.service import (
    READ_CHUNK_SIZE,
    BatchBlobWriter,
    BlobService,
    LocalBlobFiles,
    VerifiedBlobPut,
)
from builder.castore.blobs.verified import corrupt
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryPresence, DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import fetch_closure
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.castore.progress import TransferProgress
from builder.errors import IntegrityError, NotFoundError


@dataclass(frozen=True)
class Castore:
    """The two services that together hold trees."""

    blobs: BlobService
    directories: DirectoryService


@dataclass
class Copied:
    blobs: int = 0
    bytes: int = 0
    directories: int = 0

    def __str__(self) -> str:
        return f"{self.blobs} blobs ({self.bytes} bytes) and {self.directories} directories"


def leaves_first(
    root: Digest, closure: dict[Digest, Directory], wanted: set[Digest]
) -> list[Directory]:
    """The ``wanted`` part of a closure in an order a directory put accepts.

    A post-order walk: every directory comes after all its children, which
    a breadth-first order reversed does not guarantee once subtrees are shared.
    """
    order: list[Directory] = []
    visited: set[Digest] = set()
    stack: list[tuple[Digest, bool]] = [(root, False)]
    while stack:
        digest, children_done = stack.pop()
        if children_done:
            order.append(closure[digest])
            continue
        if digest in visited or digest not in wanted:
            continue
        visited.add(digest)
        stack.append((digest, True))
        stack.extend((child.digest, False) for child in closure[digest].directories)
    return order


def copy_missing(
    nodes: Iterable[Node],
    source: Castore,
    target: Castore,
    progress: TransferProgress | None = None,
) -> Copied:
    """Give ``target`` whatever of ``nodes`` it lacks and ``source`` has.

    ``progress`` learns the blobs and bytes to copy once the target has said
    which it lacks, then each blob (and each chunk of a large one) as it goes.
    """
    copied = Copied()
    sizes: dict[Digest, int] = {}
    closures: list[tuple[Digest, dict[Digest, Directory]]] = []
    for node in nodes:
        if isinstance(node, FileNode):
            sizes[node.digest] = node.size
        elif isinstance(node, DirectoryNode):
            closure = _closure(node.digest, source, target)
            if closure is None:
                continue
            closures.append((node.digest, closure))
            for directory in closure.values():
                sizes.update((file.digest, file.size) for file in directory.files)
    missing = _missing_blobs(target.blobs, list(sizes))
    if progress is not None:
        total = sum(sizes[digest] for digest in missing)
        progress.planned(len(missing), total, len(sizes) - len(missing))
    small = [(digest, sizes[digest]) for digest in missing if sizes[digest] <= SMALL_BLOB_SIZE]
    _copy_small(small, source.blobs, target.blobs, copied, progress)
    for digest in missing:
        if sizes[digest] > SMALL_BLOB_SIZE and _copy_large(
            digest, sizes[digest], source.blobs, target.blobs, progress
        ):
            copied.blobs += 1
            copied.bytes += sizes[digest]
    for root, closure in closures:
        copied.directories += copy_missing_directories(root, closure, target.directories)
    return copied


def copy_missing_directories(
    root: Digest, closure: dict[Digest, Directory], target: DirectoryService
) -> int:
    """Put the directories of ``closure`` that ``target`` lacks, children first; how many.

    For blobs and directories together, or from another service, see ``copy_missing``;
    a near/far directory pair fills its near side with this alone.
    """
    absent = _missing_directories(root, closure, target)
    if absent:
        putter = target.put_multiple_start()
        try:
            for directory in leaves_first(root, closure, absent):
                putter.put(directory)
        except BaseException:
            putter.abort()
            raise
        putter.close()
    return len(absent)


def _closure(root: Digest, source: Castore, target: Castore) -> dict[Digest, Directory] | None:
    """The closure from the source, or else from the target (whose blobs may still be missing)."""
    for side in (source, target):
        try:
            return fetch_closure(root, side.directories)
        except NotFoundError:
            continue
    return None


def _missing_blobs(blobs: BlobService, digests: list[Digest]) -> list[Digest]:
    if isinstance(blobs, BlobBatching):
        return blobs.missing(digests)
    return [digest for digest in digests if not blobs.has(digest)]


def _copy_small(
    wanted: list[tuple[Digest, int]],
    source: BlobService,
    target: BlobService,
    copied: Copied,
    progress: TransferProgress | None,
) -> None:
    def counted(blobs: Iterable[tuple[Digest, bytes]]) -> Iterator[tuple[Digest, bytes]]:
        for digest, data in blobs:
            yield digest, data
            copied.blobs += 1
            copied.bytes += len(data)
            if progress is not None:
                progress.advanced(1, len(data))

    if isinstance(source, BlobBatching):
        found = counted(source.read_small(wanted))
    else:
        found = counted(_read_each(source, wanted))
    if isinstance(target, BlobBatching):
        target.put_small(found)
    elif isinstance(target, VerifiedBlobPut):
        for group in _bounded_groups(found):
            target.put_verified(group)
    elif isinstance(target, BatchBlobWriter):
        with target.write_batch() as open_write:
            write_each(open_write, found, IntegrityError)
    else:
        write_each(target.open_write, found, IntegrityError)


def _bounded_groups(
    blobs: Iterable[tuple[Digest, bytes]],
) -> Iterator[list[tuple[Digest, bytes]]]:
    """Consecutive groups of at most ``MAX_BATCH_BYTES``, so memory stays bounded."""
    group: list[tuple[Digest, bytes]] = []
    total = 0
    for digest, data in blobs:
        if group and total + len(data) > MAX_BATCH_BYTES:
            yield group
            group, total = [], 0
        group.append((digest, data))
        total += len(data)
    if group:
        yield group


def _read_each(
    blobs: BlobService, wanted: Iterable[tuple[Digest, int]]
) -> Iterator[tuple[Digest, bytes]]:
    """Small blobs one by one; files of a local store are read and checked in one go each."""
    local = blobs if isinstance(blobs, LocalBlobFiles) else None
    for digest, size in wanted:
        if local is not None:
            location = local.local_path(digest)
            data = _read_local(location, size)
        else:
            location = type(blobs).__name__
            data = _read_stream(blobs, digest, size)
        if data is None:
            continue
        if len(data) != size:
            raise IntegrityError(f"blob {digest} of {size} bytes holds {len(data)} or more")
        if Digest.of(data) != digest:
            raise corrupt(digest, location)
        yield digest, data


def _read_local(path: str, size: int) -> bytes | None:
    """One read of a blob file, one byte more than its size so that a longer file shows."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, size + 1)
        while len(data) <= size and (more := os.read(fd, size + 1 - len(data))):
            data += more
        return data
    finally:
        os.close(fd)


def _read_stream(blobs: BlobService, digest: Digest, size: int) -> bytes | None:
    reader = blobs.open_read(digest)
    if reader is None:
        return None
    with reader:
        return read_at_most(reader, size + 1)


def _copy_large(
    digest: Digest,
    size: int,
    source: BlobService,
    target: BlobService,
    progress: TransferProgress | None,
) -> bool:
    """Stream one blob across, checking its size and digest; False if the source lacks it."""
    reader = source.open_read(digest)
    if reader is None:
        return False
    writer = target.open_write()
    copied = 0
    try:
        with reader:
            while chunk := reader.read(READ_CHUNK_SIZE):
                copied += len(chunk)
                if copied > size:
                    raise IntegrityError(f"blob {digest} holds more than its {size} bytes")
                writer.write(chunk)
                if progress is not None:
                    progress.advanced(0, len(chunk))
    except BaseException:
        writer.abort()
        raise
    if copied != size:
        writer.abort()
        raise IntegrityError(f"blob {digest} of {size} bytes holds only {copied}")
    _check_stored(digest, writer.close())
    if progress is not None:
        progress.advanced(1, 0)
    return True


def _check_stored(expected: Digest, stored: Digest) -> None:
    if stored != expected:
        raise IntegrityError(f"blob {expected} was stored as {stored}: wrong bytes")


def _missing_directories(
    root: Digest, closure: dict[Digest, Directory], directories: DirectoryService
) -> set[Digest]:
    """Probe level by level, descending only below directories the target lacks."""
    missing: set[Digest] = set()
    seen = {root}
    level = [root]
    while level:
        if isinstance(directories, DirectoryPresence):
            absent = directories.missing(level)
        else:
            absent = [digest for digest in level if directories.get(digest) is None]
        missing.update(absent)
        level = []
        for digest in absent:
            for child in closure[digest].directories:
                if child.digest not in seen:
                    seen.add(child.digest)
                    level.append(child.digest)
    return missing

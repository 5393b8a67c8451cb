"""Copying a blob file's bytes, inside the kernel where the size makes it worth it."""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from collections.abc import Iterator
from typing import BinaryIO

import blake3

from builder.castore.blobs.service import READ_CHUNK_SIZE
from builder.castore.blobs.verified import SMALL_FILE_SIZE
from builder.castore.digest import Digest
from builder.errors import IntegrityError

# copy_file_range is refused across filesystems on older kernels and by some
# filesystems altogether; sendfile then does the same job without sharing extents.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
# Stretch copied per copy_file_range call in a large copy; the hashing
# thread works on the previous stretch meanwhile.
_COPY_STEP = 16 << 20
# Errors that mean the filesystem (or the owner's quota) is full.
FULL = {errno.ENOSPC, errno.EDQUOT}


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``; a single write may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_range(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between descriptors; a source that shrinks is an integrity error.

    copy_file_range shares extents on filesystems that reflink, so a copy out of
    the store can cost no data blocks at all.
    """
    reached = max(_copy_stretches(src, dst, size, size), default=0)
    if reached < size:
        raise IntegrityError(f"blob file shrank while copying it ({reached} of {size} bytes)")


def _copy_stretches(src: int, dst: int, size: int, stretch: int) -> Iterator[int]:
    """Copy up to ``size`` bytes in the kernel, yielding the offset reached after each
    stretch of at most ``stretch`` bytes; it ends early where a shrunk source ends."""
    offset = 0
    use_copy_range = True
    while offset < size:
        count = min(stretch, size - offset)
        if use_copy_range:
            try:
                copied = os.copy_file_range(src, dst, count, offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_copy_range = False
                continue
        else:
            os.lseek(dst, offset, os.SEEK_SET)
            copied = os.sendfile(dst, src, offset, count)
        if copied == 0:
            return
        offset += copied
        yield offset


def stream_and_hash(reader: BinaryIO, dst: int, size: int) -> tuple[int, Digest]:
    """Write a blob's stream into ``dst`` and hash what was written; closes the reader.

    It stops at the first read beyond ``size`` bytes, so a stream longer than
    its node says never fills the disk; the byte count returned then exceeds
    ``size`` and tells the caller so.
    """
    hasher = blake3.blake3()
    written = 0
    with reader:
        while chunk := reader.read(READ_CHUNK_SIZE):
            written += len(chunk)
            if written > size:
                break
            hasher.update(chunk)
            write_all(dst, chunk)
    return written, Digest(hasher.digest())


def copy_and_hash(src: int, dst: int, size: int) -> tuple[int, Digest]:
    """Copy up to ``size`` bytes into an empty file and hash what was written.

    Hashing the copy rather than the source means a source changing meanwhile
    can never put other bytes under a digest; the byte count returned (one
    more than ``size`` for a small source that grew, less for one that shrank)
    lets the caller refuse a source that was not the size it expected. Small
    files take one read; large ones are copied in the kernel while a second
    thread hashes each copied stretch, so copy and hash overlap instead of
    adding up.
    """
    if size < SMALL_FILE_SIZE:
        data = os.pread(src, size + 1, 0)
        write_all(dst, data)
        return len(data), Digest(blake3.blake3(data).digest())
    try:
        # Reserving the extents up front makes ext4 write them faster, and
        # finds a full filesystem before anything is copied.
        os.posix_fallocate(dst, 0, size)
    except OSError as exc:
        if exc.errno in FULL:
            raise
        os.ftruncate(dst, size)
    hasher = blake3.blake3()
    copied = _copy_hashing(src, dst, size, hasher)
    if copied != size:
        os.ftruncate(dst, copied)
    return copied, Digest(hasher.digest())


def _copy_hashing(src: int, dst: int, size: int, hasher: blake3.blake3) -> int:
    """Copy up to ``size`` bytes in the kernel, hashing the destination as it fills.

    ``dst`` must already be ``size`` bytes long so that it can be mapped. The
    hashing thread always ends, and an error of its own is raised here.
    """
    spans: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    failure: list[BaseException] = []

    def hash_spans() -> None:
        try:
            with mmap.mmap(dst, size, prot=mmap.PROT_READ) as mapped:
                view = memoryview(mapped)
                try:
                    while (span := spans.get()) is not None:
                        hasher.update(view[span[0] : span[1]])
                finally:
                    view.release()
        except BaseException as exc:
            failure.append(exc)
            # Drain the queue so that the copying thread's final put is never lost.
            while spans.get() is not None:
                pass

    worker = threading.Thread(target=hash_spans, name="copy-hash")
    worker.start()
    offset = 0
    try:
        for reached in _copy_stretches(src, dst, size, _COPY_STEP):
            spans.put((offset, reached))
            offset = reached
            if failure:
                break
    finally:
        spans.put(None)
        worker.join()
    if failure:
        raise failure[0]
    return offset

"""A reader of a stored file that refuses to complete a read of bytes not matching their digest.

Data at rest can rot, or be left short by a crash, under a name that claims a
digest. Hashing as the bytes go out and comparing only at the end would hand a
sequential reader the whole corrupt blob before the error; so the read that
reaches the end is checked before it returns, and a reader therefore never
receives the final bytes of a blob that does not match.

Seeking is allowed: a read that does not continue where the hash left off
(a ranged read) first hashes the whole file once, so no byte of a corrupt blob
is ever served, at the price of one full pass for a reader that seeks.
"""

from __future__ import annotations

import logging
import mmap
import os

import blake3

from builder.castore.blobs.reader import SizedBlobReader
from builder.castore.digest import Digest
from builder.errors import IntegrityError

logger = logging.getLogger(__name__)

SMALL_FILE_SIZE = 4 << 20
"""Below this size a file is handled in one read; above it, by a memory map or the kernel.

One read of a small file costs fewer syscalls than any alternative, while a
large one is hashed from a mapping on BLAKE3's own threads, or copied in the
kernel, without its bytes passing through Python.
"""


def hash_fd(fd: int, size: int) -> Digest:
    """BLAKE3 of an open file's first ``size`` bytes, from one read or a shared mapping."""
    if size == 0:
        return Digest(blake3.blake3().digest())
    if size < SMALL_FILE_SIZE:
        return Digest(blake3.blake3(os.pread(fd, size, 0)).digest())
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        return Digest(blake3.blake3(mapped, max_threads=blake3.blake3.AUTO).digest())


def file_matches(path: str | bytes, digest: Digest) -> bool:
    """Whether a file (not a symlink) is at ``path`` and its bytes still hash to ``digest``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return hash_fd(fd, os.fstat(fd).st_size) == digest
    finally:
        os.close(fd)


def corrupt(digest: Digest, location: str) -> IntegrityError:
    """Log and describe a stored blob whose bytes do not hash to its digest."""
    logger.error("stored blob %s at %s does not match its digest", digest, location)
    return IntegrityError(f"blob {digest} is corrupt in the store: its contents hash differently")


class VerifiedFileReader(SizedBlobReader):
    """Reads a stored file by descriptor (owned by the reader), checked against ``digest``."""

    def __init__(self, fd: int, digest: Digest, location: str) -> None:
        super().__init__(digest, os.fstat(fd).st_size)
        self._fd = fd
        self._location = location
        self._hasher = blake3.blake3()
        self._hashed = 0
        self._verified = False

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        out = memoryview(buffer).cast("B")
        if self._pos >= self._size:
            self._check_end()
            return 0
        want = min(len(out), self._size - self._pos)
        if want == 0:
            return 0
        if not self._verified and self._pos != self._hashed:
            self._verify_whole()
        count = os.preadv(self._fd, [out[:want]], self._pos)
        if count == 0:
            # The file shrank under its name after it was opened.
            raise corrupt(self._digest, self._location)
        if not self._verified:
            self._hasher.update(out[:count])
            self._hashed += count
        self._pos += count
        if self._pos >= self._size:
            self._check_end()
        return count

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def _check_end(self) -> None:
        if self._verified:
            return
        if self._hashed != self._size:
            self._verify_whole()
            return
        if self._hasher.digest() != self._digest:
            raise corrupt(self._digest, self._location)
        self._verified = True

    def _verify_whole(self) -> None:
        if hash_fd(self._fd, self._size) != self._digest:
            raise corrupt(self._digest, self._location)
        self._verified = True

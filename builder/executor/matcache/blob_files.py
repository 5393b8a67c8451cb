"""The blob half of the materialisation cache: one verified inode per blob and variant.

Hardlinks share mode bits, so a blob needed both as a plain and as an
executable file exists as two inodes, ``blobs/`` (0444) and ``blobs-x/``
(0555); every tree links to one of them instead of holding its own copy.

Nothing enters either directory before its bytes were hashed and compared
with the digest it is filed under. Bytes at rest can still rot, and the plain
variant shares the store's inode, so damage to the store's file shows here
too: a blob already present is therefore hashed again whenever a new tree or
root-file entry links it (a mismatch is an ``IntegrityError`` and drops the
cache's name for it, so that the next fill places it afresh). A tree already
materialised is not re-read when it is reused; that is what makes a cache hit
free. Hashing always covers the bytes the cache
keeps: the store's inode itself when it is linked, the copy when it is copied,
the bytes written when streamed, so a source changing mid-copy can never put
other bytes under a digest.

The cheapest route is taken per blob: a hardlink of the store's immutable
file for the plain variant of a blob kept as a local file (``LocalBlobFiles``)
on the same filesystem (no data written at all), a kernel copy for the
executable variant or another filesystem, and a stream through ``open_read``
otherwise. Sharing the store's inode relies on its contract that stored files
never change; the cache verifies that inode once, when it first links it.

A blob is removable once nothing links it but the cache (and the store, when
the inode is the store's), i.e. its link count is back at the count it had
when it was placed, and no fill or root-file entry has pinned it. Pins exist
because a fill links blobs only after it has placed them: without them an
eviction running meanwhile could remove a blob a moment before it is linked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.service import BlobService, LocalBlobFiles
from builder.castore.blobs.verified import file_matches, hash_fd
from builder.castore.digest import Digest
from builder.castore.fs.copy import copy_and_hash, copy_range, stream_and_hash
from builder.errors import FailedPreconditionError, IntegrityError

logger = logging.getLogger(__name__)

BlobKey = tuple[Digest, bool]
"""A blob digest and whether the executable variant is meant."""

PLAIN_DIR = "blobs"
EXEC_DIR = "blobs-x"

# Errors after which a hardlink of the store's file is given up for a copy:
# another filesystem, too many links on the inode, or no hardlink support.
_NO_LINK = {errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP}

_Fill = Callable[[int], tuple[int, bytes]]
"""Writes a blob into an open file; returns the byte count and the digest of what it wrote."""


@dataclass(frozen=True, slots=True)
class PlacedBlob:
    """What the cache remembers of a blob file: enough to account for it and to sweep it."""

    size: int
    inode: int
    base_links: int


def _open_stored(digest: Digest, source: str, size: int) -> int:
    """The store's file of a blob, opened and checked to have the node's size."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise _missing(digest) from exc
    stored = os.fstat(fd).st_size
    if stored != size:
        os.close(fd)
        raise _mismatch(digest, f"{stored} bytes in the store, {size} expected")
    return fd


def _missing(digest: Digest) -> FailedPreconditionError:
    return FailedPreconditionError(f"blob {digest} is not in the blob service")


def _mismatch(digest: Digest, what: str) -> IntegrityError:
    return IntegrityError(f"blob {digest} does not match its digest: {what}")


class CacheBlobs:
    """The verified blob files under a cache root, placed once each and swept when unlinked."""

    def __init__(self, root: Path, tmp_dir: Path, service: BlobService) -> None:
        self._dirs = {False: root / PLAIN_DIR, True: root / EXEC_DIR}
        self._prefixes = {k: os.fsencode(v) + b"/" for k, v in self._dirs.items()}
        self._tmp_dir = tmp_dir
        self._service = service
        self._local = service if isinstance(service, LocalBlobFiles) else None
        self._linkable = self._local is not None and _same_device(self._local.root, root)
        self._lock = threading.Lock()
        self._present: dict[BlobKey, PlacedBlob] = {}
        self._by_inode: dict[int, BlobKey] = {}
        self._placing: dict[BlobKey, Future[PlacedBlob]] = {}
        self._pins: Counter[BlobKey] = Counter()
        self.bytes = 0
        # Shards are made as blobs arrive: a cache that serves one build (one
        # per builder-nix-serve connection) needs a few, not all 512.
        self._shards: set[bytes] = set()
        for directory in self._dirs.values():
            directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: BlobKey) -> bytes:
        hexdigest = key[0].hex().encode()
        return self._prefixes[key[1]] + hexdigest[:2] + b"/" + hexdigest

    def __len__(self) -> int:
        return len(self._present)

    def keys(self) -> list[BlobKey]:
        with self._lock:
            return list(self._present)

    def scan(self) -> list[BlobKey]:
        """Adopt the blobs a previous run left and return those no tree links any more.

        Names are trusted: a blob was linked or renamed under its name only
        after it was verified.
        """
        unlinked = []
        for executable, directory in self._dirs.items():
            for shard in os.scandir(directory):
                if not shard.is_dir(follow_symlinks=False):
                    os.unlink(shard.path)
                    continue
                for entry in os.scandir(shard.path):
                    try:
                        key = (Digest(bytes.fromhex(entry.name)), executable)
                    except ValueError:
                        os.unlink(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    base = 1 + int(not executable and self._is_store_inode(key[0], st.st_ino))
                    self._remember(key, PlacedBlob(st.st_size, st.st_ino, base))
                    if st.st_nlink <= base:
                        unlinked.append(key)
        return unlinked

    def _is_store_inode(self, digest: Digest, inode: int) -> bool:
        if not self._linkable:
            return False
        assert self._local is not None
        try:
            return os.stat(self._local.local_path(digest)).st_ino == inode
        except FileNotFoundError:
            return False

    def pin(self, keys: Iterable[BlobKey]) -> None:
        with self._lock:
            self._pins.update(keys)

    def unpin(self, keys: Iterable[BlobKey]) -> None:
        keys = list(keys)
        with self._lock:
            self._pins.subtract(keys)
            for key in keys:
                if self._pins[key] <= 0:
                    del self._pins[key]

    def ensure(self, digest: Digest, size: int, executable: bool) -> PlacedBlob:
        """The placed blob for this variant, placing and verifying it first if need be.

        Threads asking for the same blob at once share one placement.
        """
        key = (digest, executable)
        with self._lock:
            placed = self._present.get(key)
            if placed is None:
                future = self._placing.get(key)
                owner = future is None
                if future is None:
                    future = self._placing[key] = Future()
        if placed is not None:
            self._verify_present(key, placed)
        else:
            if not owner:
                placed = future.result()
            else:
                try:
                    placed = self._place(digest, size, executable)
                except BaseException as exc:
                    with self._lock:
                        del self._placing[key]
                    future.set_exception(exc)
                    raise
                with self._lock:
                    del self._placing[key]
                    self._remember(key, placed)
                future.set_result(placed)
        if placed.size != size:
            raise IntegrityError(f"blob {digest} has {placed.size} bytes, but a node says {size}")
        return placed

    def _verify_present(self, key: BlobKey, placed: PlacedBlob) -> None:
        """Hash a blob placed earlier again; forget it if its bytes no longer match."""
        path = self.path(key)
        if file_matches(path, key[0]):
            return
        logger.error("cached blob %s at %s does not match its digest", key[0], os.fsdecode(path))
        with self._lock:
            if self._present.get(key) is placed:
                del self._present[key]
                if self._by_inode.get(placed.inode) == key:
                    del self._by_inode[placed.inode]
                self.bytes -= placed.size
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        raise _mismatch(key[0], "the cached contents hash differently")

    def link(self, key: BlobKey, dir_fd: int, name: bytes) -> int:
        """Hardlink a placed blob as ``name`` in the directory open as ``dir_fd``; the
        bytes written if it had to be copied.

        A copy is the fallback for an inode at the filesystem's link limit
        (ext4 allows 65,000), which a blob as common as the empty file reaches.
        """
        source = self.path(key)
        try:
            os.link(source, name, dst_dir_fd=dir_fd)
            return 0
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(src).st_size
            mode = 0o555 if key[1] else 0o444
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dst = os.open(name, flags, mode, dir_fd=dir_fd)
            try:
                copy_range(src, dst, size)
                os.fchmod(dst, mode)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        return size

    def _remember(self, key: BlobKey, placed: PlacedBlob) -> None:
        self._present[key] = placed
        self._by_inode[placed.inode] = key
        self.bytes += placed.size

    def sweep(self, keys: Iterable[BlobKey] = (), inodes: Iterable[int] = ()) -> int:
        """Remove those of the given blobs that nothing links or pins any more; bytes freed."""
        freed = 0
        candidates = list(keys)
        with self._lock:
            candidates.extend(k for i in inodes if (k := self._by_inode.get(i)) is not None)
        for key in dict.fromkeys(candidates):
            with self._lock:
                placed = self._present.get(key)
                if placed is None or self._pins.get(key, 0) > 0:
                    continue
                path = self.path(key)
                try:
                    links = os.lstat(path).st_nlink
                except FileNotFoundError:
                    links = 0
                if links > placed.base_links:
                    continue
                if links:
                    os.unlink(path)
                del self._present[key]
                if self._by_inode.get(placed.inode) == key:
                    del self._by_inode[placed.inode]
                self.bytes -= placed.size
                freed += placed.size
        return freed

    def _place(self, digest: Digest, size: int, executable: bool) -> PlacedBlob:
        final = self.path((digest, executable))
        self._make_shard(os.path.dirname(final))
        if self._local is None:
            return self._stream(digest, size, executable, final)
        source = self._local.local_path(digest)
        if self._linkable and not executable:
            linked = self._link(digest, size, source, final)
            if linked is not None:
                return linked
        return self._copy(digest, size, executable, source, final)

    def _make_shard(self, shard: bytes) -> None:
        if shard not in self._shards:
            with contextlib.suppress(FileExistsError):
                os.mkdir(shard)
            self._shards.add(shard)

    def _link(self, digest: Digest, size: int, source: str, final: bytes) -> PlacedBlob | None:
        """Share the store's own inode after hashing it; None when it cannot be linked."""
        fd = _open_stored(digest, source, size)
        try:
            st = os.fstat(fd)
            if hash_fd(fd, size) != digest:
                raise _mismatch(digest, "the stored contents hash differently")
            try:
                os.link(source, final)
            except OSError as exc:
                if exc.errno in _NO_LINK:
                    return None
                raise
            linked = os.lstat(final)
            if linked.st_ino != st.st_ino:
                # The store's name moved to another inode between hashing and
                # linking: what was linked is unverified, so copy instead.
                os.unlink(final)
                return None
            return PlacedBlob(size, linked.st_ino, linked.st_nlink)
        finally:
            os.close(fd)

    def _copy(
        self, digest: Digest, size: int, executable: bool, source: str, final: bytes
    ) -> PlacedBlob:
        src = _open_stored(digest, source, size)
        try:
            return self._commit(
                digest, size, executable, final, lambda dst: copy_and_hash(src, dst, size)
            )
        finally:
            os.close(src)

    def _stream(self, digest: Digest, size: int, executable: bool, final: bytes) -> PlacedBlob:
        reader = self._service.open_read(digest)
        if reader is None:
            raise _missing(digest)
        return self._commit(
            digest, size, executable, final, lambda dst: stream_and_hash(reader, dst, size)
        )

    def _commit(
        self,
        digest: Digest,
        size: int,
        executable: bool,
        final: bytes,
        fill: _Fill,
    ) -> PlacedBlob:
        """Write a blob to a temporary file, verify it, and only then give it its name."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp_dir, prefix="blob-")
        try:
            try:
                written, actual = fill(fd)
                if written != size:
                    raise _mismatch(digest, f"{written} bytes read, {size} expected")
                if actual != digest:
                    raise _mismatch(digest, "the copied contents hash differently")
                os.fchmod(fd, 0o555 if executable else 0o444)
                inode = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return PlacedBlob(size, inode, 1)


def _same_device(a: str | bytes | Path, b: str | bytes | Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except FileNotFoundError:
        return False

"""Blobs as files in a local directory, sharded by digest: the default store.

A blob is written to a temporary file in the same filesystem and renamed into
place only when complete, so a crash or an aborted upload never leaves a
partial blob under a valid name. Stored files are read-only and never change,
which lets callers copy or reflink them directly (``local_path``).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import queue
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

import blake3

from builder.castore.blobs.service import ChunkMeta
from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError

# Below this size a file is hashed from one read; above it, from a memory map
# with BLAKE3's own threads, which outruns any Python-level read loop.
_MMAP_THRESHOLD = 4 << 20
# Stretch copied per copy_file_range call in a large import; the hashing
# thread works on the previous stretch meanwhile.
_COPY_STEP = 16 << 20


def _hash_file(fd: int, size: int) -> Digest:
    if size == 0:
        return Digest(blake3.blake3().digest())
    if size < _MMAP_THRESHOLD:
        return Digest(blake3.blake3(os.pread(fd, size, 0)).digest())
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        return Digest(blake3.blake3(mapped, max_threads=blake3.blake3.AUTO).digest())


def _copy_and_hash(src: int, dst: int, size: int, hasher: blake3.blake3) -> int:
    """Copy up to ``size`` bytes in the kernel, hashing the destination as it fills."""
    spans: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()

    def hash_spans() -> None:
        with mmap.mmap(dst, size, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            try:
                while (span := spans.get()) is not None:
                    hasher.update(view[span[0] : span[1]])
            finally:
                view.release()

    worker = threading.Thread(target=hash_spans, name="import-hash")
    worker.start()
    offset = 0
    try:
        while offset < size:
            step = os.copy_file_range(src, dst, min(_COPY_STEP, size - offset), offset, offset)
            if step == 0:
                break
            spans.put((offset, offset + step))
            offset += step
    finally:
        spans.put(None)
        worker.join()
    return offset


class _FsWriter:
    def __init__(self, service: FsBlobService) -> None:
        self._service = service
        fd, name = tempfile.mkstemp(dir=service.tmp_dir, prefix="put-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hasher = blake3.blake3()
        self._done = False

    def write(self, data: bytes | memoryview) -> int:
        if self._done:
            raise InvalidArgumentError("blob writer already closed")
        self._hasher.update(data)
        return self._file.write(data)

    def close(self) -> Digest:
        if self._done:
            raise InvalidArgumentError("blob writer already closed")
        self._done = True
        self._file.close()
        digest = Digest(self._hasher.digest())
        self._service._commit(self._tmp, digest)
        return digest

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()
            self._tmp.unlink(missing_ok=True)


class FsBlobService:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._root_name = str(self.root)
        self._tmp_name = str(self.tmp_dir)
        # Unique per service instance, so processes sharing a store never
        # collide on temporary names; O_EXCL guards the rest.
        self._token = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._counter = itertools.count()
        self._shards: set[str] = set()

    def local_path(self, digest: Digest) -> Path:
        """Where the blob lives (or would live); the file is read-only once there."""
        hexdigest = digest.hex()
        return self.root / hexdigest[:2] / hexdigest

    def has(self, digest: Digest) -> bool:
        return self.local_path(digest).exists()

    def open_read(self, digest: Digest) -> BinaryIO | None:
        try:
            return open(self.local_path(digest), "rb")
        except FileNotFoundError:
            return None

    def open_write(self) -> _FsWriter:
        return _FsWriter(self)

    def import_file(self, path: str | Path) -> tuple[Digest, int]:
        """Store a host file by kernel copy and hash the copy, not the original.

        Hashing what was copied (rather than the source) means a file changed
        underneath us can never be stored under the digest of other bytes.
        Small files take a path of bare syscalls, since a tree of thousands of
        them is bound by per-file overhead; large ones are copied in the kernel
        while a second thread hashes each copied stretch, so copy and hash
        overlap instead of adding up.
        """
        # O_NONBLOCK and the type check keep a path swapped for a FIFO from
        # hanging the import; O_NOFOLLOW keeps a swapped-in symlink from being read.
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            status = os.fstat(src)
            if not stat.S_ISREG(status.st_mode):
                raise InvalidArgumentError(f"cannot import {path}: not a regular file")
            size = status.st_size
            if size < _MMAP_THRESHOLD:
                return self._import_small(src)
            return self._import_large(src, size)
        finally:
            os.close(src)

    def _import_small(self, src: int) -> tuple[Digest, int]:
        parts = []
        while chunk := os.read(src, _MMAP_THRESHOLD):
            parts.append(chunk)
        data = b"".join(parts)
        digest = Digest(blake3.blake3(data).digest())
        final = self._final_name(digest)
        if os.path.exists(final):
            return digest, len(data)
        tmp, fd = self._create_tmp()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        self._place(tmp, final)
        return digest, len(data)

    def _import_large(self, src: int, size: int) -> tuple[Digest, int]:
        tmp, fd = self._create_tmp()
        try:
            with contextlib.suppress(OSError):
                # Reserving the extents up front makes ext4 write them faster.
                os.posix_fallocate(fd, 0, size)
            hasher = blake3.blake3()
            copied = _copy_and_hash(src, fd, size, hasher)
            if copied != size:
                os.ftruncate(fd, copied)
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        digest = Digest(hasher.digest())
        self._place(tmp, self._final_name(digest))
        return digest, copied

    def _final_name(self, digest: Digest) -> str:
        hexdigest = digest.hex()
        return f"{self._root_name}/{hexdigest[:2]}/{hexdigest}"

    def _create_tmp(self) -> tuple[str, int]:
        """A new temporary file, created read-only so that no chmod is needed at commit."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            tmp = f"{self._tmp_name}/import-{self._token}-{next(self._counter)}"
            try:
                return tmp, os.open(tmp, flags, 0o444)
            except FileExistsError:
                continue

    def _place(self, tmp: str, final: str) -> None:
        shard = os.path.dirname(final)
        if shard not in self._shards:
            os.makedirs(shard, exist_ok=True)
            self._shards.add(shard)
        os.replace(tmp, final)

    def _commit(self, tmp: Path, digest: Digest) -> None:
        final = self.local_path(digest)
        if final.exists():
            tmp.unlink()
            return
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        return [] if self.has(digest) else None

    def close(self) -> None:
        """Nothing is held open between calls."""

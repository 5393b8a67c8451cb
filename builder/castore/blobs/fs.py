"""Blobs as files in a local directory, sharded by digest: the default store.

A blob is written to a temporary file in the same filesystem and renamed into
place only when complete, so a crash or an aborted upload never leaves a
partial blob under a valid name. Stored files are read-only and never change,
which lets callers copy or reflink them directly (``local_path``).
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import blake3

from builder.castore.blobs.service import ChunkMeta
from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError

# Below this size a file is hashed from one read; above it, from a memory map
# with BLAKE3's own threads, which outruns any Python-level read loop.
_MMAP_THRESHOLD = 4 << 20


def _hash_file(fd: int, size: int) -> Digest:
    if size == 0:
        return Digest(blake3.blake3().digest())
    if size < _MMAP_THRESHOLD:
        return Digest(blake3.blake3(os.pread(fd, size, 0)).digest())
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
        return Digest(blake3.blake3(mapped, max_threads=blake3.blake3.AUTO).digest())


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
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="import-")
        tmp = Path(name)
        try:
            with open(path, "rb") as src, os.fdopen(fd, "r+b") as dst:
                size = os.fstat(src.fileno()).st_size
                if size < _MMAP_THRESHOLD:
                    data = src.read()
                    digest = Digest(blake3.blake3(data).digest())
                    if self.has(digest):
                        tmp.unlink()
                        return digest, len(data)
                    dst.write(data)
                    size = len(data)
                else:
                    shutil.copyfileobj(src, dst, 0)
                    dst.flush()
                    size = os.fstat(dst.fileno()).st_size
                    digest = _hash_file(dst.fileno(), size)
            self._commit(tmp, digest)
            return digest, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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

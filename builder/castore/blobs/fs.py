"""Blobs as files in a local directory, sharded by digest: the default store.

A blob is written to a temporary file in the same filesystem, flushed to disk,
and renamed into place only when complete, after which the shard directory is
flushed too (a batch, of a whole tree's host files or of streamed blobs, does
each step once for all its files: ``import_files``, ``write_batch``); so
neither a crash nor a power loss nor an aborted upload ever leaves a partial
blob under a valid name. Stored files are read-only and never
change, which lets callers copy, reflink or hardlink them directly
(``LocalBlobFiles``).

What is read is still checked against its digest (``VerifiedFileReader``),
since bytes at rest can rot; and a put of a blob already stored re-hashes the
stored file and replaces it if it no longer matches, so putting the genuine
bytes again repairs a corrupt blob. Re-hashing the existing file is cheaper
than always renaming the new one over it: that would force the new copy to
disk (an fsync) for every duplicate put, while the hash reads what is usually
still in the page cache.

A blob's modification time says when it was stored or last put again: a put
of a blob already stored touches its file, and a file is touched as it is
renamed into place, however long its upload took. A collection removes a blob
only if that time is older than its cut-off (``builder.castore.collection``),
and without a lock between processes: it renames the file away, checks the
time again on what it renamed, and puts it back if a put touched it first. A
put touches by name, so one that comes after the rename finds no file and
stores the blob anew. The removal epoch is a file beside the shards, replaced
once a collection's removals are durable.

Temporary files live in a directory owned by this process (``OwnedDirectory``),
so those of a process that was killed are removed by the next one to start.
A full filesystem is a ``ResourceExhaustedError`` naming the store, with the
temporary file removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import blake3

from builder.castore.blobs.service import BlobWriter, ChunkMeta
from builder.castore.blobs.verified import SMALL_FILE_SIZE, VerifiedFileReader, file_matches
from builder.castore.blobs.writer import HashingBlobWriter
from builder.castore.collection import StoredObject, new_epoch
from builder.castore.composition import Backend, Params, url_path
from builder.castore.digest import Digest
from builder.castore.fs.copy import FULL, copy_and_hash, write_all
from builder.castore.owned_dir import DEFAULT_MAX_AGE, OwnedDirectory, remove_flat
from builder.errors import InvalidArgumentError, ResourceExhaustedError

# For syncfs, which the os module does not offer.
_libc = ctypes.CDLL(None, use_errno=True)

EPOCH_FILE = "removal-epoch"


def _sync_filesystem(path: str) -> None:
    """Flush everything written to the filesystem holding ``path``, metadata included."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


class _ImportBatch:
    """Temporary files written in a batch and where each goes when it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.placements: list[tuple[str, str]] = []

    def add(self, tmp: str, final: str) -> None:
        with self._lock:
            self.placements.append((tmp, final))


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FsWriter(HashingBlobWriter):
    def __init__(self, service: FsBlobService, batch: _ImportBatch | None = None) -> None:
        super().__init__()
        self._service = service
        self._batch = batch
        with service.space():
            self._tmp, self._fd = service._create_tmp("put")

    def _keep(self, data: memoryview) -> None:
        try:
            with self._service.space():
                write_all(self._fd, data)
        except BaseException:
            self.abort()
            raise

    def _commit(self, digest: Digest) -> None:
        service = self._service
        try:
            with service.space():
                final = service.local_path(digest)
                if service._keep_existing(final, digest):
                    service._drop_tmp(self._tmp)
                else:
                    service._settle(self._tmp, self._fd, final, self._batch)
        except BaseException:
            service._drop_tmp(self._tmp)
            raise
        finally:
            os.close(self._fd)

    def _discard(self) -> None:
        os.close(self._fd)
        self._service._drop_tmp(self._tmp)


class FsBlobService:
    def __init__(self, root: str | Path, max_tmp_age: float = DEFAULT_MAX_AGE) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_name = str(self.root)
        self._owned = OwnedDirectory(self.root / "tmp", remove_flat, max_tmp_age)
        self.tmp_dir = self._owned.path
        self._tmp_name = str(self.tmp_dir)
        self._counter = itertools.count()
        self._shards: set[str] = set()

    def local_path(self, digest: Digest) -> str:
        """Where the blob lives (or would live); the file is read-only once there."""
        hexdigest = digest.hex()
        return f"{self._root_name}/{hexdigest[:2]}/{hexdigest}"

    def has(self, digest: Digest) -> bool:
        return os.path.exists(self.local_path(digest))

    def removal_epoch(self) -> int:
        """The number in the epoch file; 0 before any removal (``builder.castore.removal``)."""
        try:
            with open(f"{self._root_name}/{EPOCH_FILE}", "rb") as file:
                return int(file.read())
        except FileNotFoundError:
            return 0

    def stored(self) -> Iterator[StoredObject]:
        with os.scandir(self._root_name) as shards:
            names = sorted(e.name for e in shards if len(e.name) == 2 and e.is_dir())
        for shard in names:
            try:
                with os.scandir(f"{self._root_name}/{shard}") as entries:
                    found = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
            except FileNotFoundError:
                continue
            for name, status in found:
                try:
                    digest = Digest(bytes.fromhex(name))
                except (ValueError, InvalidArgumentError):
                    continue
                if stat.S_ISREG(status.st_mode):
                    yield StoredObject(digest, status.st_size, status.st_mtime)

    def remove_orphans(self, before: float) -> int:
        """Nothing is kept beside the objects."""
        return 0

    def remove_untouched(self, digests: Sequence[Digest], before: float) -> list[StoredObject]:
        removed: list[StoredObject] = []
        shards: set[str] = set()
        try:
            for digest in digests:
                final = self.local_path(digest)
                gone = self._remove_untouched(digest, final, before)
                if gone is not None:
                    removed.append(gone)
                    shards.add(os.path.dirname(final))
        finally:
            if removed:
                for shard in sorted(shards):
                    _sync_directory(shard)
                self._write_epoch()
        return removed

    def _remove_untouched(self, digest: Digest, final: str, before: float) -> StoredObject | None:
        try:
            if os.stat(final, follow_symlinks=False).st_mtime >= before:
                return None
        except FileNotFoundError:
            return None
        name = f"gc-{next(self._counter)}"
        grave = str(self._owned.claim(name))
        try:
            try:
                os.rename(final, grave)
            except FileNotFoundError:
                return None
            status = os.stat(grave, follow_symlinks=False)
            if status.st_mtime >= before:
                # A put touched it between the first look and the rename: it stays.
                with contextlib.suppress(FileExistsError):
                    os.link(grave, final)
                return None
            return StoredObject(digest, status.st_size, status.st_mtime)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(grave)
            self._owned.release(name)

    def _write_epoch(self) -> None:
        """Replace the epoch file with a fresh value, durably, after the removals it reports."""
        tmp, fd = self._create_tmp("epoch")
        try:
            write_all(fd, str(new_epoch()).encode())
            os.fsync(fd)
            os.replace(tmp, f"{self._root_name}/{EPOCH_FILE}")
            _sync_directory(self._root_name)
        finally:
            os.close(fd)
            self._drop_tmp(tmp)

    def touch(self, digest: Digest) -> bool:
        """One syscall, no more than a presence check; by name, as a put's touch."""
        return self._touch(self.local_path(digest))

    @staticmethod
    def _touch(path: str) -> bool:
        """Date a blob file now; whether it is there.

        A file another account stored cannot be dated by this one: it stays
        as old as it was, and only its own account's puts protect it.
        """
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except PermissionError:
            return os.path.exists(path)
        return True

    def _keep_existing(self, final: str, digest: Digest) -> bool:
        """Whether ``final`` holds the blob intact, touched now so that no collection takes it.

        The touch goes by name: if a collection renamed the file away since
        it was checked, the touch fails and the caller stores the blob anew.
        """
        return file_matches(final, digest) and self._touch(final)

    def open_read(self, digest: Digest) -> BinaryIO | None:
        path = self.local_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            return VerifiedFileReader(fd, digest, path)  # type: ignore[return-value]
        except BaseException:
            os.close(fd)
            raise

    def open_write(self) -> _FsWriter:
        return _FsWriter(self)

    @contextlib.contextmanager
    def space(self) -> Iterator[None]:
        """Report a full filesystem as the store being full, not as a bug."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            raise ResourceExhaustedError(
                f"blob store {self._root_name} is out of space: {exc.strerror}"
            ) from exc

    def import_file(self, src: int) -> tuple[Digest, int]:
        """Store the host file open as ``src`` by kernel copy, and hash the copy, not the original.

        Hashing what was copied (rather than the source) means a file changed
        underneath us can never be stored under the digest of other bytes.
        Small files take a path of bare syscalls, since a tree of thousands of
        them is bound by per-file overhead; large ones are copied in the kernel
        while a second thread hashes each copied stretch, so copy and hash
        overlap instead of adding up. The caller opens the file (``O_NOFOLLOW``
        and ``O_NONBLOCK`` keep a swapped-in symlink or FIFO from being read or
        hanging it); anything but a regular file is refused.
        """
        return self._import(src, None)

    @contextlib.contextmanager
    def import_files(self) -> Iterator[Callable[[int], tuple[Digest, int]]]:
        """Import many host files (from any number of threads) and make them durable together.

        Flushing every blob on its own costs two journal commits per file,
        which holds a tree of small files to a few hundred files a second.
        Inside a batch each file only reaches a temporary file; when the batch
        ends, one ``syncfs`` puts all of their bytes on disk, they are renamed
        into place, and a second ``syncfs`` makes the names durable. So no blob
        of the batch is visible before the batch ends, none is visible without
        its bytes, and a batch that fails leaves nothing: a caller must not
        store anything that refers to the batch's blobs before it ends.
        """
        with self._batch() as batch:
            yield lambda src: self._import(src, batch)

    @contextlib.contextmanager
    def write_batch(self) -> Iterator[Callable[[], BlobWriter]]:
        """Writers whose blobs become visible and durable together, as in ``import_files``.

        For blobs streamed in rather than copied from host files, such as the
        files of an archive: one ``syncfs`` per batch instead of two journal
        commits per blob.
        """
        with self._batch() as batch:
            yield lambda: _FsWriter(self, batch)

    def put_verified(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """One write per blob and one ``syncfs`` for them all, for bytes already checked.

        A streaming writer's per-blob work (hashing again, probing the final
        name by opening it) costs more than the write of a small blob. A blob
        already in place is kept if it still matches, and replaced if not.
        """
        with self.space(), self._batch() as batch:
            for digest, data in blobs:
                final = self.local_path(digest)
                if os.path.exists(final) and self._keep_existing(final, digest):
                    continue
                tmp, fd = self._create_tmp("put")
                batch.add(tmp, final)
                try:
                    write_all(fd, data)
                finally:
                    os.close(fd)

    @contextlib.contextmanager
    def _batch(self) -> Iterator[_ImportBatch]:
        batch = _ImportBatch()
        try:
            yield batch
        except BaseException:
            for tmp, _ in batch.placements:
                self._drop_tmp(tmp)
            raise
        self._place_batch(batch)

    def _import(self, src: int, batch: _ImportBatch | None) -> tuple[Digest, int]:
        status = os.fstat(src)
        if not stat.S_ISREG(status.st_mode):
            raise InvalidArgumentError(
                f"cannot import descriptor {src}: not a regular file (mode {status.st_mode:o})"
            )
        size = status.st_size
        with self.space():
            if size < SMALL_FILE_SIZE:
                return self._import_small(src, size, batch)
            return self._import_large(src, size, batch)

    def _import_small(self, src: int, size: int, batch: _ImportBatch | None) -> tuple[Digest, int]:
        # At most the size measured, as for a large file: the file is held in
        # memory whole, and one extended since could be any size.
        parts = []
        offset = 0
        while offset < size and (chunk := os.pread(src, size - offset, offset)):
            parts.append(chunk)
            offset += len(chunk)
        data = b"".join(parts)
        digest = Digest(blake3.blake3(data).digest())
        final = self.local_path(digest)
        if self._keep_existing(final, digest):
            return digest, len(data)
        tmp, fd = self._create_tmp("import")
        try:
            try:
                write_all(fd, data)
            except BaseException:
                self._drop_tmp(tmp)
                raise
            self._settle(tmp, fd, final, batch)
        finally:
            os.close(fd)
        return digest, len(data)

    def _import_large(self, src: int, size: int, batch: _ImportBatch | None) -> tuple[Digest, int]:
        tmp, fd = self._create_tmp("import")
        try:
            copied, digest = copy_and_hash(src, fd, size)
            final = self.local_path(digest)
            if self._keep_existing(final, digest):
                self._drop_tmp(tmp)
            else:
                self._settle(tmp, fd, final, batch)
        except BaseException:
            self._drop_tmp(tmp)
            raise
        finally:
            os.close(fd)
        return digest, copied

    def _settle(self, tmp: str, fd: int, final: str, batch: _ImportBatch | None) -> None:
        """Place a written temporary file now, or leave it to its batch."""
        if batch is not None:
            batch.add(tmp, final)
            return
        try:
            os.fdatasync(fd)
            self._place(tmp, final)
        finally:
            self._drop_tmp(tmp)

    def _place_batch(self, batch: _ImportBatch) -> None:
        try:
            if not batch.placements:
                return
            with self.space():
                _sync_filesystem(self._tmp_name)
                for tmp, final in batch.placements:
                    self._make_shard(os.path.dirname(final))
                    os.utime(tmp)
                    os.replace(tmp, final)
                _sync_filesystem(self._root_name)
        finally:
            for tmp, _ in batch.placements:
                self._drop_tmp(tmp)

    def _create_tmp(self, kind: str) -> tuple[str, int]:
        """A new temporary file, created read-only so that no chmod is needed at commit."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            name = f"{kind}-{next(self._counter)}"
            tmp = str(self._owned.claim(name))
            try:
                return tmp, os.open(tmp, flags, 0o444)
            except FileExistsError:
                self._owned.release(name)
                continue
            except BaseException:
                self._owned.release(name)
                raise

    def _drop_tmp(self, tmp: str) -> None:
        """Remove a temporary file unless it was renamed into place, and stop tracking it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self._owned.release(os.path.basename(tmp))

    def _place(self, tmp: str, final: str) -> None:
        """Rename a flushed temporary file into place and flush the directory entry too."""
        shard = os.path.dirname(final)
        if self._make_shard(shard):
            _sync_directory(self._root_name)
        os.utime(tmp)
        os.replace(tmp, final)
        _sync_directory(shard)

    def _make_shard(self, shard: str) -> bool:
        """Make sure a shard directory exists; whether this call created it."""
        if shard in self._shards:
            return False
        try:
            os.mkdir(shard)
            created = True
        except FileExistsError:
            created = False
        self._shards.add(shard)
        return created

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        return [] if self.has(digest) else None

    def close(self) -> None:
        """Give up this process's temporary directory; nothing else is held open."""
        self._owned.close()


def _build(params: Params) -> FsBlobService:
    return FsBlobService(Path(params.string("path")))


BACKEND = Backend(
    "blob", "fs", _build, schemes=("fs",), from_url=lambda url: {"path": url_path(url)}
)

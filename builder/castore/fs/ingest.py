"""Turning a file, directory or symlink on disk into a castore root node.

Only what the castore model can express is read: the kind of each entry, file
contents, the owner-execute bit and symlink targets. Anything else (FIFOs,
sockets, devices) has no castore form and is refused rather than dropped, so
an ingested tree never silently differs from what was on disk.

Paths are handled as bytes throughout so that names which are not valid UTF-8
round-trip exactly. The tree must not change while it is being ingested;
contents are hashed as they are stored, so a concurrent change can yield a
tree mixing old and new files, but never a blob stored under a wrong digest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import display_path
from builder.castore.nodes import FileNode, Node, SymlinkNode, validate_root_node
from builder.errors import InvalidArgumentError

# Files are stored by a few threads: hashing and file I/O release the GIL, so
# small-file trees gain from overlapping their many syscalls; beyond about one
# thread per CPU they only contend for the GIL. Batching keeps the pool's
# per-task overhead below the per-file cost.
_WORKERS = min(4, (os.cpu_count() or 1) + 1)
_BATCH = 64

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def ingest_path(
    path: StrPath,
    blobs: BlobService,
    directories: DirectoryService,
    name: bytes | None = None,
) -> Node:
    """Store ``path`` and return its root node, named by its basename unless ``name`` is given.

    A symlink at ``path`` itself is stored as a symlink, never followed.
    """
    raw = os.fsencode(path)
    if name is None:
        name = os.path.basename(os.path.abspath(raw))
    mode = os.lstat(raw).st_mode
    node: Node
    if stat.S_ISLNK(mode):
        node = SymlinkNode(name, os.readlink(raw))
    elif stat.S_ISREG(mode):
        digest, size = _file_storer(blobs)(raw)
        node = FileNode(name, digest, size, bool(mode & stat.S_IXUSR))
    elif stat.S_ISDIR(mode):
        node = _TreeIngest(blobs).run(raw, directories).node(name)
    else:
        raise _unsupported(raw, mode)
    validate_root_node(node)
    return node


def _unsupported(path: bytes, mode: int) -> InvalidArgumentError:
    if stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISBLK(mode):
        kind = "a block device"
    elif stat.S_ISCHR(mode):
        kind = "a character device"
    else:
        kind = f"of unknown type (mode {mode:o})"
    return InvalidArgumentError(
        f"cannot ingest {display_path(path)}: it is {kind}; only regular files, "
        "directories and symlinks can be stored"
    )


FileStorer = Callable[[bytes], tuple[Digest, int]]


def _file_storer(blobs: BlobService) -> FileStorer:
    """The cheapest route the blob service offers for storing a whole host file."""
    import_file = getattr(blobs, "import_file", None)
    if import_file is not None:
        return lambda path: import_file(os.fsdecode(path))
    return lambda path: _stream_file(path, blobs)


def _stream_file(path: bytes, blobs: BlobService) -> tuple[Digest, int]:
    # O_NONBLOCK keeps a file swapped for a FIFO since the walk from hanging us;
    # the fstat check then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0) as src:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _unsupported(path, mode)
        buffer = bytearray(READ_CHUNK_SIZE)
        view = memoryview(buffer)
        writer = blobs.open_write()
        size = 0
        try:
            while n := src.readinto(buffer):
                writer.write(view[:n])
                size += n
        except BaseException:
            writer.abort()
            raise
        return writer.close(), size


@dataclass
class _PendingDirectory:
    """A directory seen by the walk whose files may still be being stored."""

    path: bytes
    name: bytes
    parent: int
    nodes: list[Node] = field(default_factory=list)


class _TreeIngest:
    """Walks a directory, stores its files on a pool and its directories in one batch."""

    def __init__(self, blobs: BlobService) -> None:
        self._store_file = _file_storer(blobs)
        self._pending: list[_PendingDirectory] = []
        self._batch: list[tuple[int, os.DirEntry[bytes]]] = []
        self._futures: list[Future[list[tuple[int, FileNode]]]] = []

    def run(self, root: bytes, directories: DirectoryService) -> Directory:
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="ingest") as pool:
            try:
                self._walk(root, pool)
                for future in self._futures:
                    for index, node in future.result():
                        self._pending[index].nodes.append(node)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return self._store_directories(directories)

    def _walk(self, root: bytes, pool: ThreadPoolExecutor) -> None:
        self._pending.append(_PendingDirectory(root, b"", -1))
        # Pre-order: every directory is listed before its descendants, so the
        # reverse of this list is a valid leaves-first upload order.
        index = 0
        while index < len(self._pending):
            self._scan(index, pool)
            index += 1
        self._flush(pool)

    def _scan(self, index: int, pool: ThreadPoolExecutor) -> None:
        current = self._pending[index]
        with os.scandir(current.path) as entries:
            for entry in entries:
                if entry.is_symlink():
                    current.nodes.append(SymlinkNode(entry.name, os.readlink(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    self._pending.append(_PendingDirectory(entry.path, entry.name, index))
                elif entry.is_file(follow_symlinks=False):
                    self._batch.append((index, entry))
                    if len(self._batch) >= _BATCH:
                        self._flush(pool)
                else:
                    raise _unsupported(entry.path, entry.stat(follow_symlinks=False).st_mode)

    def _flush(self, pool: ThreadPoolExecutor) -> None:
        if self._batch:
            self._futures.append(pool.submit(self._store_batch, self._batch))
            self._batch = []

    def _store_batch(
        self, batch: list[tuple[int, os.DirEntry[bytes]]]
    ) -> list[tuple[int, FileNode]]:
        stored = []
        for index, entry in batch:
            executable = bool(entry.stat(follow_symlinks=False).st_mode & stat.S_IXUSR)
            digest, size = self._store_file(entry.path)
            stored.append((index, FileNode(entry.name, digest, size, executable)))
        return stored

    def _store_directories(self, directories: DirectoryService) -> Directory:
        built: list[Directory] = []
        for pending in reversed(self._pending):
            directory = Directory.of(pending.nodes)
            built.append(directory)
            if pending.parent >= 0:
                self._pending[pending.parent].nodes.append(directory.node(pending.name))
        putter = directories.put_multiple_start()
        for directory in built:
            putter.put(directory)
        putter.close()
        return built[-1]

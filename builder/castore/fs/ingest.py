"""Turning a file, directory or symlink on disk into a castore root node.

Only what the castore model can express is read: the kind of each entry, file
contents, the owner-execute bit and symlink targets. Anything else (FIFOs,
sockets, devices) has no castore form and is refused rather than dropped, so
an ingested tree never silently differs from what was on disk.

Paths are handled as bytes throughout so that names which are not valid UTF-8
round-trip exactly. The tree must not change while it is being ingested;
contents are hashed as they are stored, so a concurrent change can yield a
tree mixing old and new files, but never a blob stored under a wrong digest.

With an import record (``import_record``), a file whose ``lstat`` matches an
entry and whose blob is still stored is taken from the record on the walking
thread without being opened; only the others go to the pool, each opened once
and described by ``fstat`` of that same descriptor, so the entry written for
it names the file that was actually read.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from builder.castore.blobs.service import (
    READ_CHUNK_SIZE,
    BlobService,
    HostFileImport,
    HostFileImporter,
)
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import display_path
from builder.castore.fs.batches import DirectoryBatches
from builder.castore.fs.descent import walk
from builder.castore.fs.import_record import ImportRecord, RecordedImport
from builder.castore.nodes import FileNode, Node, SymlinkNode, validate_root_node
from builder.castore.progress import TransferProgress
from builder.errors import InvalidArgumentError

# Files are stored by a few threads: hashing and file I/O release the GIL, so
# small-file trees gain from overlapping their many syscalls; beyond about one
# thread per CPU they only contend for the GIL.
_WORKERS = min(4, (os.cpu_count() or 1) + 1)

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def ingest_path(
    path: StrPath,
    blobs: BlobService,
    directories: DirectoryService,
    name: bytes | None = None,
    record: ImportRecord | None = None,
    progress: TransferProgress | None = None,
) -> Node:
    """Store ``path`` and return its root node, named by its basename unless ``name`` is given.

    A symlink at ``path`` itself is stored as a symlink, never followed.
    ``record``, when given, is consulted before any file is read and learns
    the files hashed, once their blobs are stored. ``progress`` hears of
    files as they are stored or found in the record, a batch at a time.
    """
    raw = os.fsencode(path)
    if name is None:
        name = os.path.basename(os.path.abspath(raw))
    mode = os.lstat(raw).st_mode
    recorded = None if record is None else record.begin(blobs)
    node: Node
    if stat.S_ISLNK(mode):
        node = SymlinkNode(name, os.readlink(raw))
    elif stat.S_ISREG(mode):
        # The caller's path to the file is the caller's to choose; only the
        # file itself is opened without following a symlink.
        file_name = os.path.basename(raw)
        parent = os.open(os.path.dirname(raw) or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            importer = blobs.import_file if isinstance(blobs, HostFileImporter) else None
            files = _FileStore(blobs, importer, recorded)
            file = files.known(parent, [file_name])[0] or files.store(parent, file_name)
        finally:
            os.close(parent)
        node = FileNode(name, file.digest, file.size, file.executable)
        if progress is not None:
            progress.advanced(1, file.size)
    elif stat.S_ISDIR(mode):
        node = _TreeIngest(blobs, recorded, progress).run(raw, directories).node(name)
    else:
        raise _unsupported(raw, mode)
    if recorded is not None:
        recorded.commit()
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


class _FileStore:
    """Stores host files by directory descriptor and name, asking the record first if any."""

    def __init__(
        self, blobs: BlobService, importer: HostFileImport | None, recorded: RecordedImport | None
    ) -> None:
        self._blobs = blobs
        self._importer = importer
        self._recorded = recorded

    def known(self, dir_fd: int, names: list[bytes]) -> list[FileNode | None]:
        """Each file's node from the record, without opening it, if unchanged and stored."""
        if self._recorded is None:
            return [None] * len(names)
        statuses = [os.stat(name, dir_fd=dir_fd, follow_symlinks=False) for name in names]
        regular = [i for i, status in enumerate(statuses) if stat.S_ISREG(status.st_mode)]
        digests = self._recorded.known([statuses[i] for i in regular])
        nodes: list[FileNode | None] = [None] * len(names)
        for i, digest in zip(regular, digests, strict=True):
            if digest is not None:
                status = statuses[i]
                executable = bool(status.st_mode & stat.S_IXUSR)
                nodes[i] = FileNode(names[i], digest, status.st_size, executable)
        return nodes

    def store(self, dir_fd: int, name: bytes) -> FileNode:
        """Read and store the file, and tell the record what it hashed to."""
        started_ns = time.time_ns()
        # O_NONBLOCK keeps a file swapped for a FIFO since the walk from hanging
        # us; the fstat check then refuses it.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise _unsupported(name, status.st_mode)
            if self._importer is not None:
                digest, size = self._importer(fd)
            else:
                digest, size = _stream_file(fd, self._blobs)
        finally:
            os.close(fd)
        if self._recorded is not None and size == status.st_size:
            self._recorded.hashed(status, started_ns, digest)
        return FileNode(name, digest, size, bool(status.st_mode & stat.S_IXUSR))


def _stream_file(fd: int, blobs: BlobService) -> tuple[Digest, int]:
    buffer = bytearray(READ_CHUNK_SIZE)
    view = memoryview(buffer)
    writer = blobs.open_write()
    size = 0
    try:
        while n := os.readv(fd, [buffer]):
            writer.write(view[:n])
            size += n
    except BaseException:
        writer.abort()
        raise
    return writer.close(), size


@dataclass
class _PendingDirectory:
    """A directory seen by the walk whose files may still be being stored.

    Only its name and its parent's index are kept, never its path: summed
    over a deep tree, paths would cost memory quadratic in the depth.
    """

    name: bytes
    parent: int
    nodes: list[Node] = field(default_factory=list)


_Stored = tuple[int, FileNode]
"""A stored file and the index of the directory it belongs in."""


class _TreeIngest:
    """Walks a directory, stores its files on a pool and its directories in one batch.

    Files the record knows are settled on the walking thread, which has to
    list their directory anyway; a lookup is a stat and an indexed query,
    cheaper than handing the file to the pool.
    """

    def __init__(
        self,
        blobs: BlobService,
        recorded: RecordedImport | None,
        progress: TransferProgress | None,
    ) -> None:
        self._blobs = blobs
        self._recorded = recorded
        self._progress = progress
        self._pending: list[_PendingDirectory] = []

    def run(self, root: bytes, directories: DirectoryService) -> Directory:
        """Store every file, then (once the files are durable) every directory."""
        self._root = root
        with contextlib.ExitStack() as stack:
            importer = None
            if isinstance(self._blobs, HostFileImporter):
                importer = stack.enter_context(self._blobs.import_files())
            self._files = _FileStore(self._blobs, importer, self._recorded)
            with ThreadPoolExecutor(_WORKERS, thread_name_prefix="ingest") as pool:
                batches = DirectoryBatches(pool, _WORKERS, self._store, self._stored)
                try:
                    # Pre-order: every directory is listed before its descendants,
                    # so the reverse of this list is a valid leaves-first upload order.
                    self._pending.append(_PendingDirectory(b"", -1))
                    walk(root, 0, lambda fd, index: self._scan(fd, index, batches))
                    batches.finish()
                except BaseException:
                    batches.abandon()
                    raise
        return self._store_directories(directories)

    def _scan(
        self, fd: int, index: int, batches: DirectoryBatches[tuple[int, bytes], _Stored]
    ) -> list[tuple[bytes, int]]:
        current = self._pending[index]
        subdirectories = []
        files = []
        with os.scandir(fd) as listing:
            entries = list(listing)
        for entry in entries:
            name = os.fsencode(entry.name)
            if entry.is_symlink():
                current.nodes.append(SymlinkNode(name, os.readlink(name, dir_fd=fd)))
            elif entry.is_dir(follow_symlinks=False):
                subdirectories.append((name, len(self._pending)))
                self._pending.append(_PendingDirectory(name, index))
            elif entry.is_file(follow_symlinks=False):
                files.append(name)
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
                raise _unsupported(self._display(index, name), mode)
        recorded = self._files.known(fd, files)
        for name, known in zip(files, recorded, strict=True):
            if known is None:
                batches.add(index, fd, (index, name))
            else:
                current.nodes.append(known)
        if self._progress is not None:
            found = [node.size for node in recorded if node is not None]
            if found:
                self._progress.advanced(len(found), sum(found))
        return subdirectories

    def _store(self, dir_fd: int, item: tuple[int, bytes]) -> _Stored:
        index, name = item
        return index, self._files.store(dir_fd, name)

    def _stored(self, results: list[_Stored]) -> None:
        for index, node in results:
            self._pending[index].nodes.append(node)
        if self._progress is not None:
            self._progress.advanced(len(results), sum(node.size for _, node in results))

    def _display(self, index: int, name: bytes) -> bytes:
        """The path of an entry, for messages only."""
        names = [name]
        while index > 0:
            names.append(self._pending[index].name)
            index = self._pending[index].parent
        return os.path.join(self._root, *reversed(names))

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

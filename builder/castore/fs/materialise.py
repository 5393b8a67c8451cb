"""Writing a castore node back onto disk.

Modes: by default directories are 0755 and files 0644, or 0755 when
executable, so the result is an ordinary writable tree (a build's scratch
input, say). With ``read_only=True`` files become 0444/0555 and directories
0555 once filled, as for a shared cache entry nobody may alter. Ingest only
reads the owner-execute bit back, so a round trip yields the same node either
way.

On failure the destination may be left partly written; the caller owns it and
removes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.castore.blobs.service import BlobService, LocalBlobFiles
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import closure_member, display_path, fetch_closure
from builder.castore.fs.copy import copy_range, stream_and_hash
from builder.castore.fs.descent import walk
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.errors import FailedPreconditionError, IntegrityError, NotFoundError


def materialise_node(
    node: Node,
    dest: Path,
    blobs: BlobService,
    directories: DirectoryService,
    read_only: bool = False,
) -> None:
    """Create ``dest`` (which must not exist) holding ``node``; the node's own name is ignored."""
    if os.path.lexists(dest):
        raise FailedPreconditionError(f"cannot materialise onto {dest}: it already exists")
    writer = _Writer(blobs, read_only)
    if isinstance(node, DirectoryNode):
        writer.tree(node, os.fsencode(dest), fetch_closure(node.digest, directories))
    elif isinstance(node, FileNode):
        writer.file(node, None, os.fsencode(dest))
    else:
        os.symlink(node.target, dest)


class _Writer:
    def __init__(self, blobs: BlobService, read_only: bool) -> None:
        self._blobs = blobs
        self._read_only = read_only
        self._local = blobs if isinstance(blobs, LocalBlobFiles) else None

    def tree(self, node: DirectoryNode, dest: bytes, closure: dict[Digest, Directory]) -> None:
        os.mkdir(dest, 0o700)
        root = closure_member(closure, node)
        walk(dest, root, lambda fd, directory: self._fill(fd, directory, closure), self._seal)
        if self._read_only:
            os.chmod(dest, 0o555)

    def _fill(
        self, fd: int, directory: Directory, closure: dict[Digest, Directory]
    ) -> list[tuple[bytes, Directory]]:
        """Write a directory's files and symlinks, create its subdirectories, and return them."""
        os.fchmod(fd, 0o755)
        for file in directory.files:
            self.file(file, fd, file.name)
        for link in directory.symlinks:
            os.symlink(link.target, link.name, dir_fd=fd)
        children = []
        for child in directory.directories:
            os.mkdir(child.name, 0o700, dir_fd=fd)
            children.append((child.name, closure_member(closure, child)))
        return children

    def _seal(self, parent: int, name: bytes, _: Directory) -> None:
        """Called once a subdirectory is complete, so children are sealed before parents."""
        if self._read_only:
            os.chmod(name, 0o555, dir_fd=parent, follow_symlinks=False)

    def file(self, node: FileNode, dir_fd: int | None, name: bytes) -> None:
        """Create ``name`` in the directory open as ``dir_fd`` (None: relative to the cwd)."""
        mode = 0o755 if node.executable else 0o644
        if self._read_only:
            mode &= 0o555
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)
            if self._local is not None:
                self._copy_local(self._local, node, fd, name)
            else:
                self._copy_stream(node, fd, name)
        finally:
            os.close(fd)

    def _copy_local(self, local: LocalBlobFiles, node: FileNode, fd: int, dest: bytes) -> None:
        try:
            src = os.open(local.local_path(node.digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob {node.digest} for {display_path(dest)} not found") from exc
        try:
            size = os.fstat(src).st_size
            if size != node.size:
                raise IntegrityError(
                    f"blob {node.digest} for {display_path(dest)} has {size} bytes, "
                    f"the node says {node.size}"
                )
            copy_range(src, fd, size)
        finally:
            os.close(src)

    def _copy_stream(self, node: FileNode, fd: int, dest: bytes) -> None:
        reader = self._blobs.open_read(node.digest)
        if reader is None:
            raise NotFoundError(f"blob {node.digest} for {display_path(dest)} not found")
        size, digest = stream_and_hash(reader, fd, node.size)
        if size != node.size or digest != node.digest:
            raise IntegrityError(
                f"blob {node.digest} for {display_path(dest)} does not match its node "
                f"({size} bytes read, {node.size} expected)"
            )

"""The tree half of the materialisation cache: the shape of a tree, on paper and on disk.

A fill first turns the closure into a flat plan (every directory, file and
symlink with its path), so that checks happen before anything is written and
the files can be handed to worker threads in batches. Removal and the
start-up scan walk the disk with ``scandir`` types only, without a stat per
file, which keeps both proportional to the number of names rather than bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from builder.build.matcache_blobs import BlobKey
from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.fs import closure_member
from builder.castore.nodes import DirectoryNode, FileNode
from builder.errors import IntegrityError, InvalidArgumentError

# What a materialised directory costs beyond the blobs it links: one block.
DIRECTORY_BLOCK = 4096


@dataclass
class TreePlan:
    """Paths are relative to the tree root and begin with ``/``; the root itself is ``b""``."""

    directories: list[bytes] = field(default_factory=lambda: [b""])
    files: list[tuple[bytes, FileNode]] = field(default_factory=list)
    symlinks: list[tuple[bytes, bytes]] = field(default_factory=list)
    blobs: list[BlobKey] = field(default_factory=list)

    @property
    def footprint(self) -> int:
        return DIRECTORY_BLOCK * len(self.directories)


def plan_tree(node: DirectoryNode, closure: dict[Digest, Directory]) -> TreePlan:
    """Lay out every occurrence of every directory, checking each against the closure rules.

    A directory that occurs twice is materialised twice: its two places are
    different paths, even though they share one Directory.
    """
    plan = TreePlan()
    sizes: dict[Digest, int] = {}
    keys: dict[BlobKey, None] = {}
    validated: set[Digest] = set()
    stack = [(b"", closure_member(closure, node))]
    while stack:
        relative, directory = stack.pop()
        if directory.digest not in validated:
            # Names become paths: one like ``..`` from a careless backend must
            # never reach the filesystem.
            try:
                directory.validate()
            except InvalidArgumentError as exc:
                raise IntegrityError(f"directory {directory.digest} is invalid: {exc}") from exc
            validated.add(directory.digest)
        for file in directory.files:
            known = sizes.setdefault(file.digest, file.size)
            if known != file.size:
                raise IntegrityError(
                    f"blob {file.digest} is listed with sizes {known} and {file.size}"
                )
            plan.files.append((relative + b"/" + file.name, file))
            keys[(file.digest, file.executable)] = None
        for link in directory.symlinks:
            plan.symlinks.append((relative + b"/" + link.name, link.target))
        for child in directory.directories:
            path = relative + b"/" + child.name
            plan.directories.append(path)
            stack.append((path, closure_member(closure, child)))
    plan.blobs = list(keys)
    return plan


@dataclass(frozen=True)
class TreeScan:
    size: int
    footprint: int


def scan_tree(root: bytes) -> TreeScan:
    """Size by the deployed rule and footprint of a tree already on disk.

    Under that rule a directory's size is twice the number of names below it,
    so counting names is enough.
    """
    names = 0
    directories = 1
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                names += 1
                if entry.is_dir(follow_symlinks=False):
                    directories += 1
                    stack.append(entry.path)
    return TreeScan(2 * names, DIRECTORY_BLOCK * directories)


def remove_tree(root: bytes) -> list[int]:
    """Delete a read-only tree (or a single file); the inodes of the regular files it held.

    The inodes let the blob half find the blobs that may have lost their last
    tree link, without a stat per file.
    """
    if not os.path.isdir(root) or os.path.islink(root):
        os.unlink(root)
        return []
    inodes: list[int] = []
    stack: list[tuple[bytes, bool]] = [(root, False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            os.rmdir(path)
            continue
        os.chmod(path, 0o700)
        stack.append((path, True))
        with os.scandir(path) as listing:
            entries = list(listing)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, False))
            else:
                if entry.is_file(follow_symlinks=False):
                    inodes.append(entry.inode())
                os.unlink(entry.path)
    return inodes

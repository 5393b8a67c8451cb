"""The tree half of the materialisation cache: the shape of a tree, on paper and on disk.

A fill first checks the whole closure and counts what it expands to (the
plan), so that checks happen before anything is written; writing then walks
the closure again, directory by directory. The start-up scan walks the disk
with ``scandir`` types only, without a stat per file, which keeps it
proportional to the number of names rather than bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.fs import closure_member
from builder.castore.fs.descent import walk
from builder.castore.nodes import DirectoryNode
from builder.errors import IntegrityError, InvalidArgumentError
from builder.executor.matcache.blob_files import BlobKey

# What a materialised directory costs beyond the blobs it links: one block.
DIRECTORY_BLOCK = 4096


@dataclass
class TreePlan:
    """A closure checked for writing: how many directories it expands to, which blobs it needs."""

    root: Directory
    closure: dict[Digest, Directory]
    directories: int = 1
    blobs: list[BlobKey] = field(default_factory=list)

    @property
    def footprint(self) -> int:
        return DIRECTORY_BLOCK * self.directories


def plan_tree(node: DirectoryNode, closure: dict[Digest, Directory]) -> TreePlan:
    """Check every directory against the closure rules and count each occurrence.

    A directory that occurs twice is materialised twice: its two places are
    different paths, even though they share one Directory. Nothing here holds
    a path: summed over a deep tree, paths would cost memory quadratic in its
    depth.
    """
    plan = TreePlan(closure_member(closure, node), closure)
    sizes: dict[Digest, int] = {}
    keys: dict[BlobKey, None] = {}
    validated: set[Digest] = set()
    stack = [plan.root]
    while stack:
        directory = stack.pop()
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
            keys[(file.digest, file.executable)] = None
        for child in directory.directories:
            plan.directories += 1
            stack.append(closure_member(closure, child))
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

    def count(fd: int, _: None) -> list[tuple[bytes, None]]:
        nonlocal names, directories
        subdirectories = []
        with os.scandir(fd) as entries:
            for entry in entries:
                names += 1
                if entry.is_dir(follow_symlinks=False):
                    directories += 1
                    subdirectories.append((os.fsencode(entry.name), None))
        return subdirectories

    walk(root, None, count)
    return TreeScan(2 * names, DIRECTORY_BLOCK * directories)

"""Removing what a build wrote, whatever shape and permissions it left behind.

The build chose the tree: its depth (deeper than any recursion or path
limit), its modes (0o000 or 0o500 directories) and its symlinks (which may
point anywhere on the host). So removal walks by directory descriptors
(``builder.castore.fs.descent``) and fixes modes relative to the parent's
descriptor without following symlinks; nothing outside the tree is ever
read, changed or removed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.castore.fs.descent import walk

# What the owner needs on a directory to list it and unlink in it.
_OWNER_ALL = stat.S_IRWXU


def remove_tree(path: str | bytes | Path) -> list[int]:
    """Remove the file, symlink or directory tree at ``path`` (nothing there is fine);
    the inodes of the regular files the tree held.

    The inodes come from the directory listings (no stat per file), for
    callers that track hardlinked files by inode.
    """
    root = os.fsencode(path)
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(mode):
        os.unlink(root)
        return []
    if mode & _OWNER_ALL != _OWNER_ALL:
        os.chmod(root, mode | _OWNER_ALL, follow_symlinks=False)
    inodes: list[int] = []

    def empty(fd: int, _: None) -> list[tuple[bytes, None]]:
        subdirectories = []
        with os.scandir(fd) as entries:
            listed = list(entries)
        for entry in listed:
            name = os.fsencode(entry.name)
            if entry.is_dir(follow_symlinks=False):
                child_mode = entry.stat(follow_symlinks=False).st_mode
                if child_mode & _OWNER_ALL != _OWNER_ALL:
                    os.chmod(name, child_mode | _OWNER_ALL, dir_fd=fd, follow_symlinks=False)
                subdirectories.append((name, None))
            else:
                if entry.is_file(follow_symlinks=False):
                    inodes.append(entry.inode())
                os.unlink(name, dir_fd=fd)
        return subdirectories

    def remove_emptied(parent: int, name: bytes, _: None) -> None:
        os.rmdir(name, dir_fd=parent)

    walk(root, None, empty, remove_emptied)
    os.rmdir(root)
    return inodes

"""Directory trees deeper than the recursion limit and longer than PATH_MAX.

Such a tree cannot be made or inspected by path, so these helpers work
relative to directory descriptors, as the code under test must.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Deeper than any recursion limit the interpreter starts with, and with paths
# far beyond PATH_MAX (4096): 9 bytes a level.
DEPTH = max(2_500, sys.getrecursionlimit() + 1_000)
LEVEL = b"level-xx"
NEEDLE = b"needle-at-the-bottom"
_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_deep_tree(root: Path, depth: int = DEPTH) -> None:
    """``root/level-xx/.../level-xx``, a file at the top and one holding NEEDLE at the bottom."""
    root.mkdir()
    (root / "top").write_bytes(b"top file\n")
    fd = os.open(root, _FLAGS)
    try:
        for _ in range(depth):
            os.mkdir(LEVEL, dir_fd=fd)
            child = os.open(LEVEL, _FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open(b"bottom", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755, dir_fd=fd)
        os.write(leaf, b"deep " + NEEDLE + b"\n")
        os.close(leaf)
        os.symlink(b"../" * 3 + b"top", b"link", dir_fd=fd)
    finally:
        os.close(fd)


@contextmanager
def at_bottom(root: Path, depth: int = DEPTH) -> Iterator[int]:
    """A descriptor of the deepest directory of a tree made by ``make_deep_tree``."""
    fd = os.open(root, _FLAGS)
    try:
        for _ in range(depth):
            child = os.open(LEVEL, _FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def depth_of(root: Path, level: bytes = LEVEL) -> int:
    """How many directories named ``level`` are nested under ``root``."""
    depth = 0
    fd = os.open(root, _FLAGS)
    try:
        while os.fsdecode(level) in os.listdir(fd):
            child = os.open(level, _FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            depth += 1
    finally:
        os.close(fd)
    return depth


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))

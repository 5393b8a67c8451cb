"""Trees deeper than the recursion limit and PATH_MAX, through ingest, NAR and materialise."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.descent import OPEN_LIMIT, walk
from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.materialise import materialise_node
from builder.castore.fs.nar import nar_hash
from builder.castore.nodes import DirectoryNode
from builder.executor.removal import remove_tree
from tests.deep_trees import DEPTH, NEEDLE, at_bottom, depth_of, make_deep_tree, open_descriptors

Stores = dict[str, Callable[[Path], tuple[BlobService, DirectoryService]]]
STORES: Stores = {
    # FsBlobService imports files by path, MemoryBlobService is streamed to.
    "fs": lambda tmp: (FsBlobService(tmp / "blobs"), SqliteDirectoryService(tmp / "d.db")),
    "memory": lambda tmp: (MemoryBlobService(), MemoryDirectoryService()),
}


@contextmanager
def few_descriptors(spare: int = 96) -> Iterator[None]:
    """Fewer descriptors than the tree has levels: a walk holding one per level fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert spare + OPEN_LIMIT < DEPTH
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_descriptors() + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deep"
    make_deep_tree(root)
    yield root
    remove_tree(root)


@pytest.mark.parametrize("kind", sorted(STORES))
def test_deep_tree_round_trips_through_ingest_nar_and_materialise(
    kind: str, deep: Path, tmp_path: Path
) -> None:
    blobs, directories = STORES[kind](tmp_path)
    copy = tmp_path / "copy"
    try:
        with few_descriptors():
            node = ingest_path(deep, blobs, directories)
            assert isinstance(node, DirectoryNode)
            digest, size = nar_hash(node, blobs, directories)
            assert size > DEPTH * len(b"level-xx")
            materialise_node(node, copy, blobs, directories, read_only=True)
            again = ingest_path(copy, blobs, directories, node.name)
        assert again == node
        assert nar_hash(again, blobs, directories) == (digest, size)
        assert depth_of(copy) == DEPTH
        with at_bottom(copy) as bottom:
            with open(os.open("bottom", os.O_RDONLY, dir_fd=bottom), "rb") as leaf:
                assert NEEDLE in leaf.read()
            assert os.stat("bottom", dir_fd=bottom).st_mode & 0o777 == 0o555
            assert os.stat(".", dir_fd=bottom).st_mode & 0o777 == 0o555
            assert os.readlink("link", dir_fd=bottom) == "../../../top"
    finally:
        remove_tree(copy)
        directories.close()


def test_walk_reopens_parents_it_closed(deep: Path) -> None:
    """Going back up past the open window reaches the same directories, in pre-order."""
    seen: list[int] = []
    left: list[int] = []

    def enter(fd: int, level: int) -> list[tuple[bytes, int]]:
        seen.append(level)
        assert os.fstat(fd).st_ino == os.stat(fd).st_ino
        return [(b"level-xx", level + 1)] if level < DEPTH else []

    def leave(parent: int, name: bytes, level: int) -> None:
        assert name == b"level-xx"
        left.append(level)
        # The parent's descriptor is that of the directory holding the one left.
        assert os.stat(name, dir_fd=parent, follow_symlinks=False).st_nlink >= 2

    with few_descriptors():
        walk(deep, 0, enter, leave)
    assert seen == list(range(DEPTH + 1))
    assert left == list(range(DEPTH, 0, -1))


def test_walk_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").symlink_to(outside / "sub")
    with pytest.raises(OSError):
        walk(root, None, lambda fd, _: [(b"sub", None)])
    with pytest.raises(OSError):
        walk(root / "sub", None, lambda fd, _: [])

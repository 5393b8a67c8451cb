"""Which input trees are walked: those not known complete at the store's current epoch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.digest import Digest
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode, FileNode
from builder.errors import FailedPreconditionError, InvalidArgumentError
from builder.executor.inputs import StoreEpoch, missing_inputs, require_inputs
from builder.executor.matcache.cache import MaterialisationCache

GIB = 1 << 30


@pytest.fixture
def directories(tmp_path: Path) -> Iterator[SqliteDirectoryService]:
    service = SqliteDirectoryService(tmp_path / "directories.sqlite")
    yield service
    service.close()


def _tree(tmp_path: Path, name: str, shared: str, own: str) -> Path:
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "shared").write_text(shared)
    (root / "own").write_text(own)
    return root


def _held(
    tmp_path: Path, blobs: MemoryBlobService, directories: SqliteDirectoryService, count: int
) -> tuple[MaterialisationCache, list[DirectoryNode]]:
    """``count`` trees sharing one blob, each materialised and released again."""
    cache = MaterialisationCache(tmp_path / "cache", blobs, directories, GIB)
    nodes = []
    for i in range(count):
        source = _tree(tmp_path, f"src-{i}", "shared by every tree\n", f"tree {i}\n")
        node = ingest_path(source, blobs, directories, f"tree-{i}".encode())
        assert isinstance(node, DirectoryNode)
        cache.acquire(node).release()
        nodes.append(node)
    return cache, nodes


def test_a_held_tree_is_marked_complete_only_after_a_walk_finds_it_so(
    tmp_path: Path, directories: SqliteDirectoryService
) -> None:
    blobs = MemoryBlobService()
    cache, (node,) = _held(tmp_path, blobs, directories, 1)
    assert cache.complete_at(node) is None
    require_inputs((node,), blobs, directories, cache)
    assert cache.complete_at(node) == cache.store_epoch() == (0, 0)
    cache.close()


def test_a_blob_missing_from_two_trees_leaves_neither_marked(
    tmp_path: Path, directories: SqliteDirectoryService
) -> None:
    """The second tree's walk meets the missing blob already reported for the first."""
    blobs = MemoryBlobService()
    cache, nodes = _held(tmp_path, blobs, directories, 2)
    shared = directories.get(directories.get(nodes[0].digest).directories[0].digest).files[0]
    assert blobs.remove(shared.digest)
    missing = missing_inputs(tuple(nodes), blobs, directories, cache)
    assert missing == [f"blob {shared.digest} (inputs[0] tree-0/…/shared)"]
    epoch = cache.store_epoch()
    assert [cache.complete_at(node) for node in nodes] == [None, None]
    with pytest.raises(FailedPreconditionError, match=str(shared.digest)):
        require_inputs(tuple(nodes), blobs, directories, cache)
    assert epoch == (1, 0)
    cache.close()


def test_a_node_claiming_another_size_is_walked_and_refused(
    tmp_path: Path, directories: SqliteDirectoryService
) -> None:
    blobs = MemoryBlobService()
    cache, (node,) = _held(tmp_path, blobs, directories, 1)
    require_inputs((node,), blobs, directories, cache)
    liar = DirectoryNode(node.name, node.digest, node.size + 1)
    assert cache.complete_at(liar) is None
    with pytest.raises(InvalidArgumentError, match="size is"):
        require_inputs((liar,), blobs, directories, cache)
    cache.close()


def test_the_fs_blob_store_never_removes_so_its_epoch_stays(
    tmp_path: Path, directories: SqliteDirectoryService
) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    node = ingest_path(_tree(tmp_path, "src", "a\n", "b\n"), blobs, directories, b"t")
    assert isinstance(node, DirectoryNode)
    cache = MaterialisationCache(tmp_path / "cache", blobs, directories, GIB)
    with cache.acquire(node):
        require_inputs((node,), blobs, directories, cache)
        assert cache.complete_at(node) == cache.store_epoch() == (0, 0)
    cache.close()


class _RemovingFirst(MaterialisationCache):
    """A real cache; the removal lands just before the walk reads the store's epochs."""

    def arm(self, blobs: MemoryBlobService, digest: Digest) -> None:
        self._removal = (blobs, digest)

    def store_epoch(self) -> StoreEpoch | None:
        removal, self._removal = getattr(self, "_removal", None), None
        if removal is not None:
            assert removal[0].remove(removal[1])
        return super().store_epoch()


def test_a_blob_checked_for_an_earlier_file_input_is_checked_again_after_the_epoch(
    tmp_path: Path, directories: SqliteDirectoryService
) -> None:
    """A file input's look-up before the epoch read must not vouch for a tree marked at it.

    The file input and the tree share a blob; the blob goes between the file
    input's look-up and the epoch read. Marking the tree complete at the
    later epoch would let every later build skip it with the blob gone.
    """
    blobs = MemoryBlobService()
    source = _tree(tmp_path, "src", "shared\n", "own\n")
    node = ingest_path(source, blobs, directories, b"tree")
    single = ingest_path(source / "sub" / "shared", blobs, directories, b"single")
    assert isinstance(node, DirectoryNode) and isinstance(single, FileNode)
    cache = _RemovingFirst(tmp_path / "cache", blobs, directories, GIB)
    cache.acquire(node).release()
    cache.arm(blobs, single.digest)
    missing_inputs((single, node), blobs, directories, cache)
    assert cache.complete_at(node) != cache.store_epoch()
    assert missing_inputs((node,), blobs, directories, cache) == [
        f"blob {single.digest} (inputs[0] tree/…/shared)"
    ]
    cache.close()

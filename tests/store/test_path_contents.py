"""Checking a record's contents against the castore, and the NAR it stands for."""

from __future__ import annotations

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directory import Directory
from builder.castore.nodes import FileNode, SymlinkNode
from builder.errors import FailedPreconditionError, InvalidArgumentError
from builder.store.path_contents import calculate_nar, check_contents_present, put_checked
from builder.store.pathinfos.memory import MemoryPathInfoService
from tests.blob_bytes import put_bytes
from tests.deep_trees import DEPTH, LEVEL
from tests.store.infos import full_info


def test_a_missing_blob_at_the_bottom_of_a_deep_tree_is_named() -> None:
    """Deeper than the recursion limit: the walk must not recurse."""
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    directory = Directory.of([FileNode(b"bottom", Digest.of(b"never stored"), 12)])
    directories.put(directory)
    for _ in range(DEPTH):
        directory = Directory.of([directory.node(LEVEL)])
        directories.put(directory)
    root = directory.node(b"root")
    with pytest.raises(FailedPreconditionError) as caught:
        check_contents_present(root, blobs, directories)
    message = str(caught.value)
    assert message.startswith("root/" + "level-xx/" * DEPTH + "bottom: blob ")
    put_bytes(blobs, b"never stored")
    check_contents_present(root, blobs, directories)


def test_nodes_of_every_kind() -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    check_contents_present(SymlinkNode(b"l", b"/anywhere"), blobs, directories)
    with pytest.raises(FailedPreconditionError, match="f: blob"):
        check_contents_present(FileNode(b"f", Digest.of(b"x"), 1), blobs, directories)
    with pytest.raises(FailedPreconditionError, match="d: directory"):
        check_contents_present(Directory().node(b"d"), blobs, directories)


def test_put_checked_records_only_complete_contents() -> None:
    pathinfos = MemoryPathInfoService()
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    info = full_info(MemoryBlobService(), MemoryDirectoryService())
    with pytest.raises(FailedPreconditionError):
        put_checked(pathinfos, blobs, directories, info)
    assert pathinfos.get(info.path.digest) is None
    stored = full_info(blobs, directories)
    assert put_checked(pathinfos, blobs, directories, stored) == stored
    assert pathinfos.get(stored.path.digest) == stored


def test_calculate_nar_matches_the_record() -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    info = full_info(blobs, directories)
    assert calculate_nar(info.node, blobs, directories) == (info.nar_sha256, info.nar_size)
    assert calculate_nar(info.node.renamed(b""), blobs, directories) == (
        info.nar_sha256,
        info.nar_size,
    )
    with pytest.raises(InvalidArgumentError):
        calculate_nar(SymlinkNode(b"a/b", b"x"), blobs, directories)

"""The contract every DirectoryService backend must honour."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.directory import Directory
from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from builder.castore.removal import Removable
from builder.errors import InvalidArgumentError, NotFoundError
from tests.digests import EMPTY_DIGEST

EMPTY = Directory()
KEEP = Directory.of([FileNode(b".keep", EMPTY_DIGEST, 0)])
WITH_EMPTY_CHILD = Directory.of([EMPTY.node(b"a")])


def _tree() -> tuple[Directory, list[Directory]]:
    """A three-level tree with a shared child, leaves first."""
    leaf = Directory.of([FileNode(b"f", Digest.of(b"x"), 1, True), SymlinkNode(b"l", b"f")])
    middle = Directory.of([leaf.node(b"leaf"), FileNode(b"g", Digest.of(b"y"), 1)])
    root = Directory.of([middle.node(b"m"), leaf.node(b"shared"), KEEP.node(b"k")])
    return root, [leaf, KEEP, middle, root]


def test_put_and_get_single(directory_service: DirectoryService) -> None:
    assert directory_service.put(KEEP) == KEEP.digest
    assert directory_service.get(KEEP.digest) == KEEP


def test_protocol_vectors(directory_service: DirectoryService) -> None:
    assert EMPTY.digest == EMPTY_DIGEST
    directory_service.put(EMPTY)
    assert directory_service.put(WITH_EMPTY_CHILD) == Digest.parse(
        "8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc"
    )
    assert WITH_EMPTY_CHILD.size == 2


def test_unknown_digest(directory_service: DirectoryService) -> None:
    unknown = Digest.of(b"nope")
    assert directory_service.get(unknown) is None
    with pytest.raises(NotFoundError):
        list(directory_service.get_recursive(unknown))


def test_closure_put_and_breadth_first_get(directory_service: DirectoryService) -> None:
    root, leaves_first = _tree()
    putter = directory_service.put_multiple_start()
    for directory in leaves_first:
        putter.put(directory)
    assert putter.close() == root.digest
    got = list(directory_service.get_recursive(root.digest))
    assert got[0] == root
    assert [d.digest for d in got] == [
        root.digest,
        KEEP.digest,
        leaves_first[2].digest,
        leaves_first[0].digest,
    ]
    assert len({d.digest for d in got}) == len(got)


def test_single_put_requires_children(directory_service: DirectoryService) -> None:
    with pytest.raises(InvalidArgumentError, match="neither sent before nor stored"):
        directory_service.put(WITH_EMPTY_CHILD)
    assert directory_service.get(WITH_EMPTY_CHILD.digest) is None


def test_child_stored_earlier_counts(directory_service: DirectoryService) -> None:
    directory_service.put(KEEP)
    parent = Directory.of([KEEP.node(b"k")])
    assert directory_service.put(parent) == parent.digest


def _rejected(service: DirectoryService, stream: list[Directory], match: str) -> None:
    putter = service.put_multiple_start()
    with pytest.raises(InvalidArgumentError, match=match):
        for directory in stream:
            putter.put(directory)
        putter.close()
    for directory in stream:
        assert service.get(directory.digest) is None


def test_wrong_child_size(directory_service: DirectoryService) -> None:
    bad = Directory.of([DirectoryNode(b"k", KEEP.digest, 7)])
    _rejected(directory_service, [KEEP, bad], "has size 7")


def test_root_must_connect(directory_service: DirectoryService) -> None:
    other = Directory.of([SymlinkNode(b"s", b"t")])
    _rejected(directory_service, [KEEP, other], "not connected to the root")


def test_child_after_parent(directory_service: DirectoryService) -> None:
    _rejected(directory_service, [WITH_EMPTY_CHILD, EMPTY], "neither sent before nor stored")


@pytest.mark.parametrize(
    ("directory", "match"),
    [
        (
            Directory(files=(FileNode(b"b", EMPTY_DIGEST, 0), FileNode(b"a", EMPTY_DIGEST, 0))),
            "unsorted",
        ),
        (
            Directory(files=(FileNode(b"a", EMPTY_DIGEST, 0), FileNode(b"a", EMPTY_DIGEST, 0))),
            "duplicate",
        ),
        (
            Directory(
                files=(FileNode(b"a", EMPTY_DIGEST, 0),), symlinks=(SymlinkNode(b"a", b"x"),)
            ),
            "duplicate name b'a' across lists",
        ),
        (Directory(files=(FileNode(b"..", EMPTY_DIGEST, 0),)), "not allowed"),
        (Directory(files=(FileNode(b".", EMPTY_DIGEST, 0),)), "not allowed"),
        (Directory(files=(FileNode(b"a/b", EMPTY_DIGEST, 0),)), "contains '/'"),
        (Directory(files=(FileNode(b"", EMPTY_DIGEST, 0),)), "name is empty"),
        (Directory(files=(FileNode(b"a\0", EMPTY_DIGEST, 0),)), "NUL"),
        (Directory(files=(FileNode(b"x" * 256, EMPTY_DIGEST, 0),)), "more than 255"),
        (Directory(symlinks=(SymlinkNode(b"s", b""),)), "target is empty"),
        (Directory(symlinks=(SymlinkNode(b"s", b"a\0b"),)), "target contains NUL"),
        (Directory(symlinks=(SymlinkNode(b"s", b"t" * 4096),)), "more than 4095"),
    ],
)
def test_invalid_directories_rejected(
    directory_service: DirectoryService, directory: Directory, match: str
) -> None:
    _rejected(directory_service, [directory], match)


def test_empty_stream_rejected(directory_service: DirectoryService) -> None:
    with pytest.raises(InvalidArgumentError, match="no directories"):
        directory_service.put_multiple_start().close()


def test_repeated_put_is_idempotent(directory_service: DirectoryService) -> None:
    root, leaves_first = _tree()
    for _ in range(2):
        putter = directory_service.put_multiple_start()
        for directory in leaves_first:
            putter.put(directory)
        assert putter.close() == root.digest
    assert len(list(directory_service.get_recursive(root.digest))) == 4


def test_empty_child_sent_in_same_stream(directory_service: DirectoryService) -> None:
    putter = directory_service.put_multiple_start()
    putter.put(EMPTY)
    putter.put(WITH_EMPTY_CHILD)
    assert putter.close() == WITH_EMPTY_CHILD.digest
    assert directory_service.get(EMPTY.digest) == EMPTY


def test_removal_moves_the_removal_epoch(directory_service: DirectoryService) -> None:
    """A backend that can remove directories must let readers notice the removal."""
    if not isinstance(directory_service, Removable):
        assert not hasattr(directory_service, "remove"), "removes without a removal epoch"
        return
    root, leaves_first = _tree()
    putter = directory_service.put_multiple_start()
    for directory in leaves_first:
        putter.put(directory)
    putter.close()
    before = directory_service.removal_epoch()
    middle = leaves_first[2]
    assert directory_service.remove(middle.digest)
    assert directory_service.get(middle.digest) is None
    assert directory_service.get(root.digest) == root
    assert directory_service.removal_epoch() != before
    with pytest.raises(NotFoundError, match=str(middle.digest)):
        list(directory_service.get_recursive(root.digest))
    assert not directory_service.remove(middle.digest)


def test_sqlite_removal_epoch_is_shared_by_every_opener(tmp_path: Path) -> None:
    """Another process opening the same database must see removals made here."""
    path = tmp_path / "shared.sqlite"
    remover, reader = SqliteDirectoryService(path), SqliteDirectoryService(path)
    try:
        remover.put(KEEP)
        before = reader.removal_epoch()
        assert remover.remove(KEEP.digest)
        assert reader.get(KEEP.digest) is None
        assert reader.removal_epoch() != before
    finally:
        remover.close()
        reader.close()

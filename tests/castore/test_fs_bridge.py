"""Ingest and materialise: trees survive the round trip through every kind of store."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.castore.blobs.combined import CombinedBlobService
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.digest import Digest
from builder.castore.directories.cache import CacheDirectoryService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.materialise import materialise_node
from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from builder.errors import (
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
)
from tests.blob_bytes import put_bytes, read_all
from tests.requirements import missing

# A tree is a nested value: ("file", contents, mode), ("link", target) or
# ("dir", {name: tree}); snapshots read from disk use the same shape with the
# mode reduced to the owner-execute bit, the only one castore keeps.
Tree = tuple[Any, ...]
Store = tuple[BlobService, DirectoryService]


@contextmanager
def _memory(tmp: Path) -> Iterator[Store]:
    yield MemoryBlobService(), MemoryDirectoryService()


@contextmanager
def _fs_sqlite(tmp: Path) -> Iterator[Store]:
    blobs, directories = FsBlobService(tmp / "blobs"), SqliteDirectoryService(tmp / "dirs.db")
    try:
        yield blobs, directories
    finally:
        directories.close()


@contextmanager
def _combined_cache(tmp: Path) -> Iterator[Store]:
    blobs = CombinedBlobService(MemoryBlobService(), FsBlobService(tmp / "far"))
    far = SqliteDirectoryService(tmp / "far.db")
    try:
        yield blobs, CacheDirectoryService(MemoryDirectoryService(), far)
    finally:
        far.close()


STORES: dict[str, Callable[[Path], Any]] = {
    "memory": _memory,
    "fs-sqlite": _fs_sqlite,
    "combined-cache": _combined_cache,
}

_AWKWARD_NAMES = [
    "café".encode(),
    "日本語".encode(),
    b"\xff\xfe",
    b"caf\xe9",
    b".hidden",
    b"-n",
    b" space ",
    b"x" * 255,
]


def _valid_name(name: bytes) -> bool:
    return b"/" not in name and b"\0" not in name and name not in (b".", b"..")


names = st.one_of(
    st.sampled_from(_AWKWARD_NAMES),
    st.binary(min_size=1, max_size=8).filter(_valid_name),
)
targets = st.one_of(
    st.sampled_from([b"/nonexistent/dangling", b"../up", b".", b"/", "ziel-ü".encode()]),
    st.binary(min_size=1, max_size=40).filter(lambda t: b"\0" not in t),
)
files = st.tuples(
    st.just("file"),
    st.binary(max_size=3000),
    st.sampled_from([0o644, 0o600, 0o655, 0o677, 0o755, 0o700, 0o744, 0o711]),
)
links = st.tuples(st.just("link"), targets)
trees = st.recursive(
    st.one_of(files, links, st.just(("dir", {}))),
    lambda children: st.dictionaries(names, children, max_size=5).map(lambda d: ("dir", d)),
    max_leaves=25,
)
directory_trees = st.dictionaries(names, trees, max_size=6).map(lambda d: ("dir", d))


def write_tree(path: Path | bytes, tree: Tree) -> None:
    raw = os.fsencode(path)
    kind = tree[0]
    if kind == "file":
        with open(raw, "wb") as f:
            f.write(tree[1])
        os.chmod(raw, tree[2])
    elif kind == "link":
        os.symlink(tree[1], raw)
    else:
        os.mkdir(raw)
        for name, child in tree[1].items():
            write_tree(os.path.join(raw, name), child)


def expected(tree: Tree) -> Tree:
    """What a snapshot of the written tree must show."""
    if tree[0] == "file":
        return ("file", tree[1], bool(tree[2] & stat.S_IXUSR))
    if tree[0] == "link":
        return tree
    return ("dir", {name: expected(child) for name, child in tree[1].items()})


def snapshot(path: Path | bytes) -> Tree:
    raw = os.fsencode(path)
    mode = os.lstat(raw).st_mode
    if stat.S_ISLNK(mode):
        return ("link", os.readlink(raw))
    if stat.S_ISREG(mode):
        with open(raw, "rb") as f:
            return ("file", f.read(), bool(mode & stat.S_IXUSR))
    assert stat.S_ISDIR(mode), f"unexpected kind at {raw!r}"
    return ("dir", {name: snapshot(os.path.join(raw, name)) for name in os.listdir(raw)})


def modes(path: Path | bytes) -> Iterator[tuple[bytes, int]]:
    """Permission bits of every non-symlink below and including ``path``."""
    raw = os.fsencode(path)
    st_mode = os.lstat(raw).st_mode
    if not stat.S_ISLNK(st_mode):
        yield raw, stat.S_IMODE(st_mode)
    if stat.S_ISDIR(st_mode):
        for name in os.listdir(raw):
            yield from modes(os.path.join(raw, name))


def remove_tree(path: Path) -> None:
    """rmtree that also copes with read-only directories when not running as root."""
    for raw, mode in list(modes(path)):
        if stat.S_ISDIR(os.lstat(raw).st_mode):
            os.chmod(raw, mode | 0o700)
    shutil.rmtree(path)


@pytest.mark.parametrize("store", sorted(STORES))
@settings(max_examples=40, deadline=None)
@given(tree=directory_trees, read_only=st.booleans())
def test_round_trip(store: str, tree: Tree, read_only: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with STORES[store](tmp) as (blobs, directories):
            write_tree(tmp / "src", tree)
            node = ingest_path(tmp / "src", blobs, directories)
            assert isinstance(node, DirectoryNode)
            assert node.name == b"src"

            materialise_node(node, tmp / "out", blobs, directories, read_only=read_only)
            assert snapshot(tmp / "out") == expected(tree)
            for raw, mode in modes(tmp / "out"):
                if stat.S_ISDIR(os.lstat(raw).st_mode):
                    assert mode == (0o555 if read_only else 0o755), raw
                else:
                    executable = mode & stat.S_IXUSR
                    assert mode == (0o555 if executable else 0o444) | (0 if read_only else 0o200), (
                        raw
                    )

            assert ingest_path(tmp / "out", blobs, directories, name=b"src") == node
            remove_tree(tmp / "out")


@pytest.mark.parametrize("store", sorted(STORES))
@settings(max_examples=30, deadline=None)
@given(tree=st.one_of(files, links))
def test_round_trip_of_a_root_file_or_symlink(store: str, tree: Tree) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with STORES[store](tmp) as (blobs, directories):
            write_tree(tmp / "root", tree)
            node = ingest_path(tmp / "root", blobs, directories)
            assert isinstance(node, FileNode if tree[0] == "file" else SymlinkNode)
            materialise_node(node, tmp / "out", blobs, directories)
            assert snapshot(tmp / "out") == expected(tree)
            assert ingest_path(tmp / "out", blobs, directories, name=b"root") == node


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with STORES[request.param](tmp_path / "store") as pair:
        yield pair


def test_root_symlink_to_a_directory_is_not_followed(tmp_path: Path, store: Store) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    node = ingest_path(tmp_path / "link", *store)
    assert node == SymlinkNode(b"link", os.fsencode(tmp_path / "real"))


def test_known_directory_digests(tmp_path: Path, store: Store) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / ".keep").write_bytes(b"")
    node = ingest_path(tmp_path / "keep", *store)
    assert node == DirectoryNode(
        b"keep",
        Digest.parse("8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"),
        2,
    )

    (tmp_path / "nested" / "a").mkdir(parents=True)
    node = ingest_path(tmp_path / "nested", *store)
    assert node == DirectoryNode(
        b"nested",
        Digest.parse("8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc"),
        2,
    )

    (tmp_path / "empty").mkdir()
    assert ingest_path(tmp_path / "empty", *store) == DirectoryNode(
        b"empty",
        Digest.parse("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        0,
    )


def test_known_file_digest_and_executable_bit(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "hello"
    path.write_bytes(b"Hello World!")
    path.chmod(0o755)
    assert ingest_path(path, *store) == FileNode(
        b"hello",
        Digest.parse("5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"),
        12,
        True,
    )


def test_name_argument_and_non_utf8_paths(tmp_path: Path, store: Store) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"\xff-dir")
    os.mkdir(raw)
    with open(os.path.join(raw, b"\xfe"), "wb") as f:
        f.write(b"data")
    assert ingest_path(raw, *store).name == b"\xff-dir"
    assert ingest_path(raw + b"/", *store).name == b"\xff-dir"
    assert ingest_path(raw, *store, name=b"other").name == b"other"


def _assert_rejected(path: Path, kind: str, store: Store, root: Path | None = None) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ingest_path(root or path, *store)
    assert str(path) in str(info.value)
    assert kind in str(info.value)


def test_fifo_is_rejected_at_the_root_and_inside_a_tree(tmp_path: Path, store: Store) -> None:
    os.mkfifo(tmp_path / "fifo")
    _assert_rejected(tmp_path / "fifo", "FIFO", store)
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    os.mkfifo(tmp_path / "tree" / "sub" / "pipe")
    _assert_rejected(tmp_path / "tree" / "sub" / "pipe", "FIFO", store, root=tmp_path / "tree")


def test_socket_is_rejected(tmp_path: Path, store: Store) -> None:
    (tmp_path / "tree").mkdir()
    path = tmp_path / "tree" / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        _assert_rejected(path, "socket", store)
        _assert_rejected(path, "socket", store, root=tmp_path / "tree")


def test_character_device_is_rejected(store: Store) -> None:
    _assert_rejected(Path("/dev/null"), "character device", store)


def test_block_device_is_rejected(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "blk"
    try:
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(7, 200))
    except PermissionError:
        missing("CAP_MKNOD, to create a block device node")
    _assert_rejected(path, "block device", store)


class _RecordingBlobService(MemoryBlobService):
    """Remembers the size of every write, to show a large file is streamed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def open_write(self) -> Any:
        inner = super().open_write()
        writes = self.writes

        class Writer:
            def write(self, data: bytes | memoryview) -> int:
                writes.append(len(data))
                return inner.write(data)

            def close(self) -> Digest:
                return inner.close()

            def abort(self) -> None:
                inner.abort()

        return Writer()


def test_large_file_is_streamed_through_a_non_local_store(tmp_path: Path) -> None:
    blobs, directories = _RecordingBlobService(), MemoryDirectoryService()
    data = os.urandom(2 * READ_CHUNK_SIZE + 12345)
    (tmp_path / "big").write_bytes(data)
    node = ingest_path(tmp_path / "big", blobs, directories)
    assert node == FileNode(b"big", Digest(blake3.blake3(data).digest()), len(data), False)
    assert len(blobs.writes) == 3
    assert max(blobs.writes) <= READ_CHUNK_SIZE
    assert read_all(blobs, node.digest) == data

    materialise_node(node, tmp_path / "out", blobs, directories)
    assert (tmp_path / "out").read_bytes() == data


def test_large_file_through_the_fs_store(tmp_path: Path) -> None:
    blobs, directories = FsBlobService(tmp_path / "blobs"), MemoryDirectoryService()
    data = os.urandom(5 * READ_CHUNK_SIZE + 7)
    (tmp_path / "big").write_bytes(data)
    node = ingest_path(tmp_path / "big", blobs, directories)
    assert node == FileNode(b"big", Digest(blake3.blake3(data).digest()), len(data), False)
    materialise_node(node, tmp_path / "out", blobs, directories)
    assert (tmp_path / "out").read_bytes() == data


def test_materialise_refuses_an_existing_destination(tmp_path: Path, store: Store) -> None:
    node = SymlinkNode(b"l", b"target")
    (tmp_path / "out").symlink_to("elsewhere")
    with pytest.raises(FailedPreconditionError, match="already exists"):
        materialise_node(node, tmp_path / "out", *store)


def test_materialise_reports_a_missing_blob(tmp_path: Path, store: Store) -> None:
    node = FileNode(b"f", Digest.of(b"never stored"), 12)
    with pytest.raises(NotFoundError):
        materialise_node(node, tmp_path / "out", *store)


def test_materialise_reports_a_missing_directory(tmp_path: Path, store: Store) -> None:
    node = DirectoryNode(b"d", Digest.of(b"no such directory"), 1)
    with pytest.raises(NotFoundError):
        materialise_node(node, tmp_path / "out", *store)


def test_materialise_checks_file_sizes(tmp_path: Path, store: Store) -> None:
    blobs, directories = store
    digest = put_bytes(blobs, b"four")
    with pytest.raises(IntegrityError):
        materialise_node(FileNode(b"f", digest, 5), tmp_path / "out", blobs, directories)


def test_materialise_checks_streamed_contents(tmp_path: Path) -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    digest = put_bytes(blobs, b"right")
    blobs._blobs[digest] = b"wrong"
    with pytest.raises(IntegrityError, match="does not match"):
        materialise_node(FileNode(b"f", digest, 5), tmp_path / "out", blobs, directories)


def test_materialise_checks_directory_sizes(tmp_path: Path, store: Store) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"")
    node = ingest_path(tmp_path / "src", *store)
    assert isinstance(node, DirectoryNode)
    with pytest.raises(IntegrityError, match="size"):
        materialise_node(DirectoryNode(b"src", node.digest, 7), tmp_path / "out", *store)


def test_import_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    from builder.castore.blobs.fs import FsBlobService

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(InvalidArgumentError, match="not a regular file"):
            FsBlobService(tmp_path / "blobs").import_file(fd)
    finally:
        os.close(fd)

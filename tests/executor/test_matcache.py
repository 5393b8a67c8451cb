"""The materialisation cache against a real fs + sqlite store in a temporary directory."""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.service import BlobService, ChunkMeta
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from builder.errors import FailedPreconditionError, IntegrityError
from builder.executor.matcache import blob_files
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.removal import remove_tree
from tests.blob_bytes import put_bytes
from tests.waiting import wait_for

GIB = 1 << 30


@dataclass
class Store:
    blobs: FsBlobService
    directories: SqliteDirectoryService
    tmp: Path

    def ingest(self, path: Path) -> Node:
        return ingest_path(path, self.blobs, self.directories)

    def cache(self, max_bytes: int = GIB, blobs: BlobService | None = None) -> MaterialisationCache:
        return MaterialisationCache(
            self.tmp / "cache", blobs or self.blobs, self.directories, max_bytes
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    directories = SqliteDirectoryService(tmp_path / "directories.sqlite")
    yield Store(FsBlobService(tmp_path / "blobs"), directories, tmp_path)
    directories.close()


def write_tree(root: Path, files: int, seed: str, size: int = 64) -> Path:
    """``files`` distinct files spread over subdirectories of 100."""
    for i in range(files):
        path = root / f"d{i // 100}" / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{seed}:{i}:".encode().ljust(size, b"."))
    return root


def sample_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "plain").write_bytes(b"same bytes")
    (root / "tool").write_bytes(b"same bytes")
    (root / "tool").chmod(0o755)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "big").write_bytes(os.urandom(5 << 20))
    (root / "sub" / "deeper" / "note").write_bytes(b"note")
    os.symlink("../plain", root / "sub" / "link")
    os.symlink("/absolute/elsewhere", root / "dangling")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None]]:
    """Kind, owner-execute bit and contents (or target) of everything below ``root``."""
    seen: dict[str, tuple[str, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                seen[relative] = ("link", os.readlink(path).encode())
            elif stat.S_ISDIR(mode):
                seen[relative] = ("dir", None)
            else:
                kind = "exec" if mode & stat.S_IXUSR else "file"
                seen[relative] = (kind, path.read_bytes())
    return seen


def test_tree_is_materialised_with_contents_modes_and_symlinks(store: Store) -> None:
    source = sample_tree(store.tmp / "src")
    node = store.ingest(source)
    cache = store.cache()
    with cache.acquire(node) as acquired:
        host = acquired.host_path
        assert host is not None
        assert acquired.symlink_target is None
        assert snapshot(host) == snapshot(source)
        for dirpath, _, filenames in os.walk(host):
            assert stat.S_IMODE(os.lstat(dirpath).st_mode) == 0o555
            for name in filenames:
                mode = os.lstat(Path(dirpath) / name).st_mode
                if not stat.S_ISLNK(mode):
                    assert stat.S_IMODE(mode) in (0o444, 0o555)
        assert stat.S_IMODE((host / "tool").stat().st_mode) == 0o555
        assert stat.S_IMODE((host / "plain").stat().st_mode) == 0o444
    cache.close()


def test_plain_and_executable_variants_are_separate_inodes(store: Store) -> None:
    node = store.ingest(sample_tree(store.tmp / "src"))
    cache = store.cache()
    with cache.acquire(node) as acquired:
        assert acquired.host_path is not None
        plain = (acquired.host_path / "plain").stat()
        tool = (acquired.host_path / "tool").stat()
        assert plain.st_ino != tool.st_ino
        assert (stat.S_IMODE(plain.st_mode), stat.S_IMODE(tool.st_mode)) == (0o444, 0o555)
        # The plain variant shares the store's immutable inode; nothing was copied.
        assert plain.st_ino == os.stat(store.blobs.local_path(Digest.of(b"same bytes"))).st_ino
    cache.close()


def test_root_file_and_symlink_nodes(store: Store) -> None:
    digest = put_bytes(store.blobs, b"#!/bin/sh\n")
    cache = store.cache()
    for executable, mode in ((False, 0o444), (True, 0o555)):
        with cache.acquire(FileNode(b"script", digest, 10, executable)) as acquired:
            assert acquired.host_path is not None
            assert acquired.host_path.read_bytes() == b"#!/bin/sh\n"
            assert stat.S_IMODE(acquired.host_path.stat().st_mode) == mode
    with cache.acquire(SymlinkNode(b"link", b"target")) as acquired:
        assert acquired.host_path is None
        assert acquired.symlink_target == b"target"
    cache.close()


FILE_OPERATIONS = frozenset(
    {
        "open",
        "os.chmod",
        "os.link",
        "os.listdir",
        "os.mkdir",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.scandir",
        "os.symlink",
    }
)


@contextmanager
def file_operations_on_this_thread() -> Iterator[list[str]]:
    """The file system operations this thread makes within the block, as Python audits them.

    An audit hook cannot be removed, so it stays installed and idle after the block.
    """
    seen: list[str] = []
    thread = threading.get_ident()
    recording = threading.Event()
    recording.set()

    def hook(event: str, args: tuple[object, ...]) -> None:
        if recording.is_set() and event in FILE_OPERATIONS and threading.get_ident() == thread:
            seen.append(event)

    sys.addaudithook(hook)
    try:
        yield seen
    finally:
        recording.clear()


def test_second_acquire_does_no_per_file_work(store: Store) -> None:
    """How fast a warm acquisition is is a figure of tests/benchmarks/bench_matcache.py."""
    node = store.ingest(write_tree(store.tmp / "src", 5000, "warm"))
    cache = store.cache()
    with cache.acquire(node) as first:
        assert first.host_path is not None
        host = first.host_path
        tree_inode = host.stat().st_ino
        sample_inode = (host / "d7" / "f777").stat().st_ino
    blobs_before = sorted(os.listdir(store.tmp / "cache" / "blobs"))
    with file_operations_on_this_thread() as operations:
        for _ in range(20):
            cache.acquire(node).release()
    assert operations == []
    assert host.stat().st_ino == tree_inode
    assert (host / "d7" / "f777").stat().st_ino == sample_inode
    assert sorted(os.listdir(store.tmp / "cache" / "blobs")) == blobs_before
    stats = cache.stats()
    assert (stats.fills, stats.hits, stats.misses) == (1, 20, 1)
    cache.close()


class HeldDirectories:
    """Holds the closure fetch until every acquirer has called ``acquire``, so that they overlap."""

    def __init__(self, inner: DirectoryService, acquirers: int) -> None:
        self.inner = inner
        self.acquirers = acquirers
        self.calling: list[int] = []
        self.recursive_gets = 0

    def get(self, digest: Digest) -> Directory | None:
        return self.inner.get(digest)

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        self.recursive_gets += 1
        wait_for(lambda: len(self.calling) == self.acquirers, "every acquirer to call acquire")
        return self.inner.get_recursive(digest)


def test_concurrent_acquirers_share_one_fill(store: Store) -> None:
    source = write_tree(store.tmp / "src", 800, "concurrent")
    node = store.ingest(source)
    directories = HeldDirectories(store.directories, acquirers=6)
    cache = MaterialisationCache(store.tmp / "cache", store.blobs, directories, GIB)  # type: ignore[arg-type]
    seen: list[int] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            directories.calling.append(1)
            with cache.acquire(node) as acquired:
                assert acquired.host_path is not None
                seen.append(sum(len(files) for _, _, files in os.walk(acquired.host_path)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert seen == [800] * 6
    assert directories.recursive_gets == 1
    stats = cache.stats()
    # Each acquire counts once: one filled, the others waited for that fill
    # or (arriving once it was done) found the tree.
    assert stats.fills == 1
    assert stats.misses + stats.hits == 6
    cache.close()


def tree_bytes(files: int, size: int) -> int:
    """What a tree of ``write_tree`` costs the cache: its blobs and a block per directory."""
    return files * size + 4096 * (1 + (files + 99) // 100)


def test_lru_eviction_removes_least_recently_used_unused_tree(store: Store) -> None:
    nodes = {
        name: store.ingest(write_tree(store.tmp / name, 20, name, size=10_000))
        for name in ("a", "b", "c")
    }
    cost = tree_bytes(20, 10_000)
    cache = store.cache(max_bytes=2 * cost + cost // 2)
    trees = store.tmp / "cache" / "trees"
    for name in ("a", "b", "a"):
        cache.acquire(nodes[name]).release()
    cache.acquire(nodes["c"]).release()
    present = set(os.listdir(trees))
    assert present == {nodes["a"].digest.hex(), nodes["c"].digest.hex()}  # type: ignore[union-attr]
    stats = cache.stats()
    assert stats.bytes_used <= stats.max_bytes
    assert stats.evictions == 1
    # The evicted tree's blobs went with it; the store still has them.
    b_blob = Digest.of(b"b:0:".ljust(10_000, b"."))
    assert not (store.tmp / "cache" / "blobs" / b_blob.hex()[:2] / b_blob.hex()).exists()
    assert store.blobs.has(b_blob)
    cache.close()


def test_eviction_never_removes_a_tree_in_use(store: Store) -> None:
    nodes = [
        store.ingest(write_tree(store.tmp / f"t{i}", 20, f"t{i}", size=10_000)) for i in range(4)
    ]
    cost = tree_bytes(20, 10_000)
    cache = store.cache(max_bytes=cost + cost // 2)
    with cache.acquire(nodes[0]) as held:
        assert held.host_path is not None
        for node in nodes[1:]:
            cache.acquire(node).release()
            assert held.host_path.is_dir()
            assert snapshot(held.host_path) == snapshot(store.tmp / "t0")
        assert os.listdir(store.tmp / "cache" / "trees") == [nodes[0].digest.hex()]  # type: ignore[union-attr]
        # Two trees in use at once: over the bound, and both survive.
        with cache.acquire(nodes[1]) as second:
            assert second.host_path is not None and second.host_path.is_dir()
            assert cache.stats().bytes_used > cache.max_bytes
        assert held.host_path.is_dir()
    assert cache.stats().bytes_used <= cache.max_bytes
    cache.close()


def corrupt(store: Store, digest: Digest, contents: bytes) -> None:
    path = Path(store.blobs.local_path(digest))
    path.chmod(0o644)
    path.write_bytes(contents)
    path.chmod(0o444)


def assert_nothing_left(store: Store) -> None:
    cache_root = store.tmp / "cache"
    assert os.listdir(cache_root / "trees") == []
    assert os.listdir(cache_root / "tmp") == []


@pytest.mark.parametrize("wrong", [b"same-length-wrong", b"shorter"])
def test_corrupted_blob_is_detected_and_leaves_no_tree(store: Store, wrong: bytes) -> None:
    source = write_tree(store.tmp / "src", 300, "corrupt", size=17)
    node = store.ingest(source)
    victim = Digest.of((source / "d1" / "f150").read_bytes())
    corrupt(store, victim, wrong)
    cache = store.cache()
    with pytest.raises(IntegrityError, match=re.escape(str(victim))):
        cache.acquire(node)
    assert_nothing_left(store)
    assert not any((store.tmp / "cache" / "blobs").rglob(victim.hex()))
    assert cache.stats().trees == 0
    cache.close()


def test_corrupted_executable_copy_is_detected(store: Store) -> None:
    digest = put_bytes(store.blobs, b"original")
    corrupt(store, digest, b"tampered")
    cache = store.cache()
    with pytest.raises(IntegrityError):
        cache.acquire(FileNode(b"x", digest, 8, executable=True))
    assert not any((store.tmp / "cache" / "blobs-x").rglob(digest.hex()))
    assert os.listdir(store.tmp / "cache" / "tmp") == []
    cache.close()


def test_missing_directory_names_the_digest(store: Store) -> None:
    missing = Digest.of(b"no such directory")
    cache = store.cache()
    with pytest.raises(FailedPreconditionError, match=re.escape(str(missing))):
        cache.acquire(DirectoryNode(b"x", missing, 2))
    assert_nothing_left(store)
    cache.close()


def test_missing_blob_names_the_digest_and_leaves_no_tree(store: Store) -> None:
    present = put_bytes(store.blobs, b"present")
    missing = Digest.of(b"never stored")
    directory = Directory.of([FileNode(b"here", present, 7), FileNode(b"gone", missing, 12)])
    store.directories.put(directory)
    cache = store.cache()
    with pytest.raises(FailedPreconditionError, match=re.escape(str(missing))):
        cache.acquire(directory.node(b"inputs"))
    assert_nothing_left(store)
    # The blob placed before the failure is swept too: a failed fill leaves nothing.
    assert cache.stats().blobs == 0
    cache.close()


def test_node_size_mismatch_is_refused(store: Store) -> None:
    node = store.ingest(write_tree(store.tmp / "src", 3, "size"))
    assert isinstance(node, DirectoryNode)
    cache = store.cache()
    cache.acquire(node).release()
    with pytest.raises(IntegrityError, match="size"):
        cache.acquire(DirectoryNode(node.name, node.digest, node.size + 2))
    assert cache.stats().in_use == 0
    cache.close()


def test_leftover_temporary_directories_are_removed_on_start(store: Store) -> None:
    leftover = store.tmp / "cache" / "tmp" / "tree-crashed"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "file").write_bytes(b"partial")
    (leftover / "sub").chmod(0o555)
    leftover.chmod(0o555)
    (store.tmp / "cache" / "tmp" / "blob-crashed").write_bytes(b"partial")
    cache = store.cache()
    assert os.listdir(store.tmp / "cache" / "tmp") == []
    cache.close()


def test_trees_from_a_previous_run_are_reused(store: Store) -> None:
    node = store.ingest(sample_tree(store.tmp / "src"))
    first = store.cache()
    with first.acquire(node) as acquired:
        assert acquired.host_path is not None
        inode = acquired.host_path.stat().st_ino
    used = first.stats().bytes_used
    first.close()
    second = store.cache()
    assert second.stats().bytes_used == used
    with second.acquire(node) as acquired:
        assert acquired.host_path is not None
        assert acquired.host_path.stat().st_ino == inode
    assert (second.stats().fills, second.stats().hits) == (0, 1)
    second.close()


class StreamOnly:
    """A blob service with no local files, so the cache must stream and hash."""

    def __init__(self, inner: FsBlobService) -> None:
        self.inner = inner

    def has(self, digest: Digest) -> bool:
        return self.inner.has(digest)

    def open_read(self, digest: Digest) -> BinaryIO | None:
        return self.inner.open_read(digest)

    def open_write(self) -> object:
        return self.inner.open_write()

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        return self.inner.chunks(digest)

    def close(self) -> None:
        self.inner.close()


def test_streamed_blobs_are_verified(store: Store) -> None:
    source = sample_tree(store.tmp / "src")
    node = store.ingest(source)
    cache = store.cache(blobs=StreamOnly(store.blobs))  # type: ignore[arg-type]
    with cache.acquire(node) as acquired:
        assert acquired.host_path is not None
        assert snapshot(acquired.host_path) == snapshot(source)
    cache.close()
    other = write_tree(store.tmp / "other", 5, "stream")
    node = store.ingest(other)
    corrupt(store, Digest.of((other / "d0" / "f3").read_bytes()), b"x" * 64)
    with pytest.raises(IntegrityError):
        store.cache(blobs=StreamOnly(store.blobs)).acquire(node)  # type: ignore[arg-type]


def test_link_limit_falls_back_to_a_copy(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    node = store.ingest(write_tree(store.tmp / "src", 4, "links"))
    cache = store.cache()
    real_link = os.link

    def link_at_limit(src: bytes, dst: bytes, *, dst_dir_fd: int | None = None) -> None:
        # Trees link relative to their directory's descriptor; placing a blob does not.
        if dst_dir_fd is not None:
            raise OSError(errno.EMLINK, "too many links")
        real_link(src, dst)

    monkeypatch.setattr(blob_files.os, "link", link_at_limit)
    with cache.acquire(node) as acquired:
        assert acquired.host_path is not None
        copy = acquired.host_path / "d0" / "f2"
        assert copy.read_bytes() == (store.tmp / "src" / "d0" / "f2").read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o444
        assert copy.stat().st_nlink == 1
    cache.close()


class OneDirectory:
    """A directory backend that returns whatever it was given, unvalidated."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def get(self, digest: Digest) -> Directory | None:
        return self.directory if digest == self.directory.digest else None

    def get_recursive(self, digest: Digest) -> Iterator[Directory]:
        return iter([self.directory])


def test_a_name_that_would_escape_the_tree_is_refused(store: Store) -> None:
    digest = put_bytes(store.blobs, b"escape")
    evil = Directory.of([FileNode(b"..", digest, 6)])
    cache = MaterialisationCache(store.tmp / "cache", store.blobs, OneDirectory(evil), GIB)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="invalid"):
        cache.acquire(evil.node(b"inputs"))
    assert_nothing_left(store)
    cache.close()


def test_a_tree_removed_behind_the_cache_is_dropped_quietly(store: Store) -> None:
    first = store.ingest(write_tree(store.tmp / "first", 20, "first", size=10_000))
    second = store.ingest(write_tree(store.tmp / "second", 20, "second", size=10_000))
    cache = store.cache(max_bytes=tree_bytes(20, 10_000) + 1000)
    with cache.acquire(first) as acquired:
        assert acquired.host_path is not None
        gone = acquired.host_path
    remove_tree(os.fsencode(gone))
    cache.acquire(second).release()
    assert cache.stats().trees == 1
    assert os.listdir(store.tmp / "cache" / "tmp") == []
    cache.close()

"""Batches in the fs blob store, imported or written: durable, visible together, or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import builder.castore.blobs.fs as fs_blobs
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.service import BlobWriter
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.fs.ingest import ingest_path
from tests.blob_bytes import read_all


def _import(import_one: Callable[[int], tuple[Digest, int]], path: Path) -> Digest:
    fd = os.open(path, os.O_RDONLY)
    try:
        return import_one(fd)[0]
    finally:
        os.close(fd)


def _files(tmp_path: Path, count: int) -> list[Path]:
    source = tmp_path / "source"
    source.mkdir()
    paths = []
    for i in range(count):
        path = source / f"f{i}"
        path.write_bytes(f"file {i}\n".encode())
        paths.append(path)
    return paths


def test_blobs_of_a_batch_become_visible_when_it_ends(tmp_path: Path) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    paths = _files(tmp_path, 3)
    with blobs.import_files() as import_one:
        digests = [_import(import_one, path) for path in paths]
        assert not any(blobs.has(digest) for digest in digests)
    for path, digest in zip(paths, digests, strict=True):
        assert read_all(blobs, digest) == path.read_bytes()
    assert os.listdir(blobs.tmp_dir) == []


def test_a_failed_batch_leaves_nothing(tmp_path: Path) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    paths = _files(tmp_path, 3)
    digests = []
    with pytest.raises(RuntimeError), blobs.import_files() as import_one:
        digests = [_import(import_one, path) for path in paths]
        raise RuntimeError("the caller failed")
    assert len(digests) == 3
    assert not any(blobs.has(digest) for digest in digests)
    assert os.listdir(blobs.tmp_dir) == []


def test_bytes_are_flushed_before_names_and_names_before_the_batch_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    paths = _files(tmp_path, 4)
    events: list[str] = []
    real_sync, real_replace = fs_blobs._sync_filesystem, os.replace

    def sync(path: str) -> None:
        events.append("sync")
        real_sync(path)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(fs_blobs, "_sync_filesystem", sync)
    monkeypatch.setattr(os, "replace", replace)
    with blobs.import_files() as import_one:
        for path in paths:
            _import(import_one, path)
        assert events == []
    assert events == ["sync", "rename", "rename", "rename", "rename", "sync"]


def test_tree_ingest_flushes_once_per_tree_not_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-file flushes cost two journal commits each; a tree pays two syncfs in all."""
    blobs = FsBlobService(tmp_path / "blobs")
    _files(tmp_path, 50)
    flushes: list[str] = []
    real_sync, real_fdatasync = fs_blobs._sync_filesystem, os.fdatasync

    def sync(path: str) -> None:
        flushes.append("syncfs")
        real_sync(path)

    def fdatasync(fd: int) -> None:
        flushes.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(fs_blobs, "_sync_filesystem", sync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    directories = MemoryDirectoryService()
    node = ingest_path(tmp_path / "source", blobs, directories)
    stored = directories.get(node.digest)
    assert stored is not None
    assert all(blobs.has(file.digest) for file in stored.files)
    assert len(stored.files) == 50
    assert flushes == ["syncfs", "syncfs"]


def test_written_blobs_of_a_batch_become_visible_when_it_ends(tmp_path: Path) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    contents = [b"one", b"two", b"one"]
    with blobs.write_batch() as open_write:
        digests = [put_bytes_with(open_write, data) for data in contents]
        assert not any(blobs.has(digest) for digest in digests)
    for data, digest in zip(contents, digests, strict=True):
        assert read_all(blobs, digest) == data
    assert os.listdir(blobs.tmp_dir) == []


def test_a_failed_write_batch_leaves_nothing(tmp_path: Path) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    digests = []
    with pytest.raises(RuntimeError), blobs.write_batch() as open_write:
        digests = [put_bytes_with(open_write, b"blob %d" % i) for i in range(3)]
        aborted = open_write()
        aborted.write(b"half")
        aborted.abort()
        raise RuntimeError("the caller failed")
    assert len(digests) == 3
    assert not any(blobs.has(digest) for digest in digests)
    assert os.listdir(blobs.tmp_dir) == []


def test_a_write_batch_flushes_once_not_per_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    flushes: list[str] = []
    real_sync, real_fdatasync = fs_blobs._sync_filesystem, os.fdatasync

    def sync(path: str) -> None:
        flushes.append("syncfs")
        real_sync(path)

    def fdatasync(fd: int) -> None:
        flushes.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(fs_blobs, "_sync_filesystem", sync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with blobs.write_batch() as open_write:
        for i in range(20):
            put_bytes_with(open_write, b"blob %d" % i)
    assert flushes == ["syncfs", "syncfs"]


def put_bytes_with(open_write: Callable[[], BlobWriter], data: bytes) -> Digest:
    writer = open_write()
    writer.write(data)
    return writer.close()


def test_an_import_reads_no_more_than_the_size_the_file_was_measured_at(tmp_path: Path) -> None:
    """A small file that grows while it is read is stored at the size measured, as a large one is.

    Reading on to EOF instead would let a file extended meanwhile (by a
    ``truncate -s 100G``, say) fill memory, since small files are read
    whole. A procfs file is measured as empty yet reads as text: the same
    as a file that grew between the measurement and the read.
    """
    blobs = FsBlobService(tmp_path / "blobs")
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 0 and os.pread(fd, 1, 0)
        digest, size = blobs.import_file(fd)
    finally:
        os.close(fd)
    assert size == 0
    assert read_all(blobs, digest) == b""

"""Copying blob files: what is hashed is what was written, whatever the source did."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import blake3
import pytest

from builder.castore.blobs.verified import SMALL_FILE_SIZE
from builder.castore.fs import copy
from builder.castore.fs.copy import copy_and_hash, copy_range
from builder.errors import IntegrityError


def _copied(tmp_path: Path, data: bytes, size: int) -> tuple[int, bytes, bytes]:
    (tmp_path / "src").write_bytes(data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        count, digest = copy_and_hash(src, dst, size)
    finally:
        os.close(src)
        os.close(dst)
    return count, digest, (tmp_path / "dst").read_bytes()


@pytest.mark.parametrize("size", [0, 1000, SMALL_FILE_SIZE, SMALL_FILE_SIZE + 12345])
def test_copy_and_hash_copies_and_hashes_the_bytes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    count, digest, written = _copied(tmp_path, data, size)
    assert (count, digest, written) == (size, blake3.blake3(data).digest(), data)


def test_copy_and_hash_reports_a_small_source_that_grew(tmp_path: Path) -> None:
    grown, _, _ = _copied(tmp_path, os.urandom(1010), 1000)
    assert grown == 1001


def test_copy_and_hash_stops_a_large_source_at_its_size(tmp_path: Path) -> None:
    size = SMALL_FILE_SIZE + 12345
    data = os.urandom(size + 10)
    count, digest, written = _copied(tmp_path, data, size)
    assert (count, written) == (size, data[:size])
    assert digest == blake3.blake3(data[:size]).digest()


@pytest.mark.parametrize("size", [1000, SMALL_FILE_SIZE + 12345])
def test_copy_and_hash_reports_a_source_that_shrank(tmp_path: Path, size: int) -> None:
    shrunk, digest, written = _copied(tmp_path, os.urandom(size - 10), size)
    assert shrunk == size - 10
    assert digest == blake3.blake3(written).digest()


def test_kernel_copies_fall_back_to_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_: object) -> int:
        raise OSError(errno.EXDEV, "cross-device copy")

    monkeypatch.setattr(copy.os, "copy_file_range", refused)
    size = SMALL_FILE_SIZE + 12345
    data = os.urandom(size)
    count, digest, written = _copied(tmp_path, data, size)
    assert (count, digest, written) == (size, blake3.blake3(data).digest(), data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "again", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        copy_range(src, dst, size)
        with pytest.raises(IntegrityError, match="shrank"):
            copy_range(src, dst, size + 1)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "again").read_bytes() == data

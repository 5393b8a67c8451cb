"""The framing on its own, over real pipes: bounds before allocation, padding, exact reads."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator

import pytest

from builder.nixserve import wire
from builder.nixserve.wire import (
    MAX_PATH_LENGTH,
    ProtocolError,
    UnexpectedEndError,
    WireReader,
    WireWriter,
)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """Each test closes the write end (itself or through ``_feed``); the read end is closed here."""
    read, write = os.pipe()
    yield read, write
    os.close(read)


def _feed(fd: int, data: bytes) -> None:
    """Write from a thread, so that more than a pipe's buffer can be fed, then close."""

    def run() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.close(fd)

    threading.Thread(target=run, daemon=True).start()


def test_round_trip(pipe: tuple[int, int]) -> None:
    read, write = pipe
    writer = WireWriter(write)
    writer.u64(7)
    writer.string("abc")
    writer.strings(["", "12345678", "x" * 9])
    writer.flush()
    os.close(write)
    reader = WireReader(read)
    assert reader.u64("n") == 7
    assert reader.string("s") == "abc"
    assert reader.strings("l") == ["", "12345678", "x" * 9]
    assert reader.at_end()


def test_reads_stop_exactly_where_asked(pipe: tuple[int, int]) -> None:
    read, write = pipe
    payload = bytes(range(256)) * 1000
    _feed(write, payload + struct.pack("<Q", 99))
    reader = WireReader(read)
    assert reader.read(10) == payload[:10]
    assert reader.read(len(payload) - 10) == payload[10:]
    assert reader.u64("after") == 99
    assert reader.read(5) == b""


def test_end_inside_a_field(pipe: tuple[int, int]) -> None:
    read, write = pipe
    _feed(write, struct.pack("<Q", 16) + b"short")
    with pytest.raises(UnexpectedEndError, match="unexpected end of input while reading name"):
        WireReader(read).string("name")


def test_non_zero_padding(pipe: tuple[int, int]) -> None:
    read, write = pipe
    _feed(write, struct.pack("<Q", 3) + b"abc" + b"\0\0\0\0\x07")
    with pytest.raises(ProtocolError, match="name: non-zero padding"):
        WireReader(read).string("name")


def test_lengths_are_checked_before_reading(pipe: tuple[int, int]) -> None:
    read, write = pipe
    # Nothing follows the claimed length: the bound must fail before any read of the body.
    _feed(write, struct.pack("<Q", MAX_PATH_LENGTH + 1))
    with pytest.raises(ProtocolError, match=f"path: {MAX_PATH_LENGTH + 1} bytes, more than"):
        WireReader(read).path("path")


def test_list_counts_are_bounded(pipe: tuple[int, int]) -> None:
    read, write = pipe
    _feed(write, struct.pack("<Q", 1 << 62))
    with pytest.raises(ProtocolError, match="paths: 4611686018427387904 items"):
        WireReader(read).paths("paths")


def _string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data + b"\0" * (-len(data) % 8)


def test_a_lists_strings_are_bounded_together(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each item within its own bound, yet together too much for one command to hold."""
    read, write = pipe
    monkeypatch.setattr(wire, "MAX_LIST_BYTES", 100)
    items = [b"x" * 40, b"y" * 60, b"z"]
    _feed(write, struct.pack("<Q", 2) + b"".join(map(_string, items[:2])) + struct.pack("<Q", 3)
          + b"".join(map(_string, items)))  # fmt: skip
    reader = WireReader(read)
    assert reader.strings("exactly the bound") == ["x" * 40, "y" * 60]
    with pytest.raises(ProtocolError, match="targets: more than 100 bytes in all"):
        reader.strings("targets")

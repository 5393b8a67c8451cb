"""Reading a Nix archive (NAR) from a stream straight into the castore.

Nix hands store paths over as NARs embedded in its protocol streams, with no
length in front: the end of the archive is found only by parsing it, and the
caller's next command follows at once. So every read asks for no more than the
grammar says comes next (and never beyond the size the sender announced), and
the stream is left exactly at the archive's end.

Only the canonical form ``nix-store --dump`` writes is accepted: one layout of
each node, entries sorted bytewise, zero padding. That makes the archive the
one ``builder.castore.fs.nar.write_nar`` renders from the resulting node, so the
SHA-256 checked here is the hash that node will be served under later.

The sender is hostile. Every length is checked against what may appear at that
place before anything is read or allocated; names and symlink targets follow
the castore rules; a directory may carry at most as many entries as a Directory
message may. Nesting depth is the sender's choice, so the tree is built on an
explicit stack, never by recursion.

Memory stays bounded by the archive's structure, never by its contents: file
contents stream into blob writers ``READ_CHUNK_SIZE`` bytes at a time. What is
held is one ``Directory`` per directory of the archive, because none of them
may be stored before the whole archive has been read and its size and hash
verified; they are then put as one closure, leaves first.

Nothing is stored on failure: no directory is put, and the blob being written
when the error is found is aborted. Blobs of files completed before the error
stay in the blob service, content-addressed and referenced by nothing; they are
left to garbage collection rather than deleted, since another writer may have
stored the same contents and rely on that digest. A blob service that writes in
batches (``BatchBlobWriter``, the fs store) gets the whole archive as one
batch, which a failure discards: then no new blob appears at all, and an
archive of many small files pays for making its blobs durable once, not once
per file.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from builder.castore.blobs.service import (
    READ_CHUNK_SIZE,
    BatchBlobWriter,
    BlobService,
    BlobWriter,
)
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.nar import nar_string
from builder.castore.nodes import (
    MAX_NAME_LENGTH,
    MAX_TARGET_LENGTH,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    check_name,
)
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES
from builder.errors import InvalidArgumentError
from builder.store import nixbase32
from builder.store.path_info import NAR_SHA256_SIZE

# Longest strings allowed where only a node type or a field marker may appear.
_MAX_TYPE_LENGTH = len(b"directory")
_MAX_MARKER_LENGTH = len(b"executable")

# Files up to this size are read together with their padding and closing
# parenthesis in one read: small files are the common case, and every read
# call costs as much as a few hundred bytes of copying.
_SMALL_FILE_SIZE = 64 << 10

_ZEROS = bytes(8)

OpenWrite = Callable[[], BlobWriter]


class NarSource(Protocol):
    def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes; ``b""`` only at the end of the input."""
        ...


@dataclass(frozen=True)
class IngestedNar:
    node: Node
    """The root node, named as the caller asked."""
    nar_size: int
    nar_sha256: bytes
    """The 32 raw bytes of the SHA-256 of exactly the archive's bytes."""


_MAGIC = nar_string(b"nix-archive-1")
_OPEN = nar_string(b"(")
_CLOSE = nar_string(b")")
_TYPE = nar_string(b"type")
_ENTRY = nar_string(b"entry")
_NAME = nar_string(b"name")
_NODE = nar_string(b"node")
_TARGET = nar_string(b"target")
_CONTENTS = nar_string(b"contents")
_EXECUTABLE = b"executable"
_EMPTY_THEN_CONTENTS = nar_string(b"") + _CONTENTS

# The fixed runs of tokens the grammar allows at each place, read in one go.
_ARCHIVE_START = _MAGIC + _OPEN + _TYPE
_ENTRY_NODE = _NODE + _OPEN + _TYPE
_ENTRY_OR_CLOSE_SIZE = len(_ENTRY)  # the same as len(_CLOSE)


def _tokens(encoded: bytes) -> list[tuple[int, int, bytes]]:
    """The start, padded length and text of each token in a fixed run."""
    tokens = []
    position = 0
    while position < len(encoded):
        length = int.from_bytes(encoded[position : position + 8], "little")
        tokens.append(
            (position, 8 + length + (-length % 8), encoded[position + 8 : position + 8 + length])
        )
        position += tokens[-1][1]
    return tokens


def _first_difference(expected: bytes, found: bytes) -> tuple[int, str]:
    """Where ``found`` departs from the fixed run ``expected`` and what was due there."""
    index = next(i for i, (a, b) in enumerate(zip(expected, found, strict=True)) if a != b)
    for start, size, text in _tokens(expected):
        if start <= index < start + size:
            if index >= start + 8 + len(text):
                return index, f"non-zero padding after {text.decode()!r}"
            return start, f"expected {text.decode()!r}"
    raise AssertionError("a difference lies inside the run")


class _Reader:
    """Exact reads from the source, counted and hashed, never past what is due."""

    __slots__ = ("_source", "limit", "offset", "sha256")

    def __init__(self, source: NarSource, limit: int | None) -> None:
        self._source = source
        self.limit = limit
        self.offset = 0
        self.sha256 = hashlib.sha256()

    def error(self, offset: int, problem: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"NAR at offset {offset}: {problem}")

    def take(self, size: int) -> bytes:
        """Exactly ``size`` bytes, which the grammar says come next."""
        if not size:
            return b""
        end = self.offset + size
        if self.limit is not None and end > self.limit:
            raise InvalidArgumentError(
                f"NAR size: expected {self.limit} bytes, but at offset {self.offset} the "
                f"archive goes on for at least {end - self.limit} more"
            )
        data = self._source.read(size)
        if len(data) != size:
            data = self._complete(data, size)
        self.sha256.update(data)
        self.offset = end
        return data

    def _complete(self, first: bytes, size: int) -> bytes:
        """Keep reading after a short read until ``size`` bytes are in."""
        parts = bytearray(first)
        while len(parts) < size:
            chunk = self._source.read(size - len(parts))
            if not chunk:
                raise self.error(
                    self.offset + len(parts),
                    f"truncated: the input ended with {size - len(parts)} more bytes "
                    "of the archive due",
                )
            parts += chunk
        if len(parts) > size:
            raise InvalidArgumentError(
                f"NAR source returned {len(parts) - size} bytes more than the {size} asked for"
            )
        return bytes(parts)

    def expect(self, run: bytes) -> None:
        """The fixed run of tokens ``run``, which is all the grammar allows here."""
        start = self.offset
        found = self.take(len(run))
        if found != run:
            index, problem = _first_difference(run, found)
            raise self.error(start + index, problem)

    def string(self, limit: int, what: str) -> bytes:
        """A variable string of at most ``limit`` bytes, checked before it is read."""
        start = self.offset
        length = self.number()
        if length > limit:
            raise self.error(start, f"{what} is {length} bytes long, more than {limit}")
        padded = self.take(length + (-length % 8))
        if padded[length:] != _ZEROS[: len(padded) - length]:
            raise self.error(start + 8 + length, f"non-zero padding after {what}")
        return padded[:length]

    def number(self) -> int:
        return int.from_bytes(self.take(8), "little")


class _Frame:
    """A directory of the archive whose entries are still being read."""

    __slots__ = ("count", "directories", "files", "name", "previous", "symlinks")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.directories: list[DirectoryNode] = []
        self.files: list[FileNode] = []
        self.symlinks: list[SymlinkNode] = []
        self.previous: bytes | None = None
        self.count = 0

    def add(self, node: Node) -> None:
        if isinstance(node, FileNode):
            self.files.append(node)
        elif isinstance(node, DirectoryNode):
            self.directories.append(node)
        else:
            self.symlinks.append(node)

    def directory(self) -> Directory:
        # Entries arrived sorted, so each list is sorted as the digest requires.
        return Directory(tuple(self.directories), tuple(self.files), tuple(self.symlinks))


def ingest_nar(
    source: NarSource,
    name: bytes,
    blobs: BlobService,
    directories: DirectoryService,
    expected_size: int | None = None,
    expected_sha256: bytes | None = None,
) -> IngestedNar:
    """Read one NAR from ``source``, store its contents and return its root node named ``name``.

    With ``expected_size`` or ``expected_sha256``, the archive must have exactly
    that size and hash; no byte beyond ``expected_size`` is ever read.
    """
    if name:
        check_name(name, "root node")
    if expected_size is not None and not 0 <= expected_size < 2**64:
        raise InvalidArgumentError(f"expected_size: {expected_size} is not a NAR size")
    if expected_sha256 is not None and len(expected_sha256) != NAR_SHA256_SIZE:
        raise InvalidArgumentError(
            f"expected_sha256: must be {NAR_SHA256_SIZE} bytes, got {len(expected_sha256)}"
        )
    reader = _Reader(source, expected_size)
    with contextlib.ExitStack() as batch:
        open_write = blobs.open_write
        if isinstance(blobs, BatchBlobWriter):
            open_write = batch.enter_context(blobs.write_batch())
        node, closure = _parse(reader, name, open_write)
        if expected_size is not None and reader.offset != expected_size:
            raise InvalidArgumentError(
                f"NAR size: expected {expected_size} bytes, "
                f"but the archive ended after {reader.offset}"
            )
        sha256 = reader.sha256.digest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise InvalidArgumentError(
                f"NAR sha256: expected sha256:{nixbase32.encode(expected_sha256)}, "
                f"got sha256:{nixbase32.encode(sha256)}"
            )
    # The batch has ended: every blob is durable before a directory refers to it.
    if closure:
        putter = directories.put_multiple_start()
        for directory in closure:
            putter.put(directory)
        putter.close()
    return IngestedNar(node, reader.offset, sha256)


def _parse(reader: _Reader, name: bytes, open_write: OpenWrite) -> tuple[Node, list[Directory]]:
    """The root node and every directory below it, leaves first; only blobs are stored."""
    closure: list[Directory] = []
    stack: list[_Frame] = []
    reader.expect(_ARCHIVE_START)
    while True:
        # At a node's type: "(" and "type" have been read.
        node = _node_body(reader, name, stack, open_write)
        while node is not None or stack:
            if node is not None:
                if not stack:
                    return node, closure
                stack[-1].add(node)
                reader.expect(_CLOSE)
            frame = stack[-1]
            start = reader.offset
            marker = reader.take(_ENTRY_OR_CLOSE_SIZE)
            if marker == _CLOSE:
                stack.pop()
                directory = frame.directory()
                closure.append(directory)
                node = directory.node(frame.name)
                continue
            if marker != _ENTRY:
                raise _entry_or_close_error(reader, start, marker)
            reader.expect(_OPEN + _NAME)
            name = _entry_name(reader, frame, start)
            reader.expect(_ENTRY_NODE)
            break


def _entry_or_close_error(reader: _Reader, start: int, found: bytes) -> InvalidArgumentError:
    for expected in (_ENTRY, _CLOSE):
        text_end = 8 + int.from_bytes(expected[:8], "little")
        if found[:text_end] == expected[:text_end]:
            # The right token with something in its padding.
            index, problem = _first_difference(expected, found)
            return reader.error(start + index, problem)
    return reader.error(start, "expected 'entry' or ')'")


def _entry_name(reader: _Reader, frame: _Frame, entry_start: int) -> bytes:
    start = reader.offset
    name = reader.string(MAX_NAME_LENGTH, "entry name")
    check_name(name, f"NAR at offset {start}: directory entry")
    if frame.previous is not None and name <= frame.previous:
        problem = "duplicate" if name == frame.previous else "unsorted"
        raise reader.error(start, f"{problem} entry {name!r} after {frame.previous!r}")
    frame.count += 1
    if frame.count > DEFAULT_MAX_DIRECTORY_ENTRIES:
        raise reader.error(
            entry_start,
            f"directory {frame.name!r} has more than {DEFAULT_MAX_DIRECTORY_ENTRIES} entries",
        )
    frame.previous = name
    return name


def _node_body(
    reader: _Reader, name: bytes, stack: list[_Frame], open_write: OpenWrite
) -> Node | None:
    """Read one node after its "(" "type"; a directory is pushed and ``None`` returned."""
    start = reader.offset
    kind = reader.string(_MAX_TYPE_LENGTH, "node type")
    if kind == b"regular":
        return _regular(reader, name, open_write)
    if kind == b"symlink":
        reader.expect(_TARGET)
        target_start = reader.offset
        target = reader.string(MAX_TARGET_LENGTH, "symlink target")
        if not target:
            raise reader.error(target_start, "symlink target is empty")
        if b"\0" in target:
            raise reader.error(target_start, "symlink target contains NUL")
        reader.expect(_CLOSE)
        return SymlinkNode(name, target)
    if kind == b"directory":
        stack.append(_Frame(name))
        return None
    raise reader.error(start, f"unknown node type {kind!r}")


def _regular(reader: _Reader, name: bytes, open_write: OpenWrite) -> FileNode:
    start = reader.offset
    marker = reader.string(_MAX_MARKER_LENGTH, "field name")
    executable = marker == _EXECUTABLE
    if executable:
        reader.expect(_EMPTY_THEN_CONTENTS)
    elif marker != b"contents":
        raise reader.error(start, f"expected 'executable' or 'contents', found {marker!r}")
    size_start = reader.offset
    size = reader.number()
    padding = -size % 8
    writer = open_write()
    try:
        if size <= _SMALL_FILE_SIZE:
            data = reader.take(size + padding + len(_CLOSE))
            writer.write(data[:size])
            tail = data[size:]
        else:
            _check_room(reader, size_start, size + padding + len(_CLOSE))
            remaining = size
            while remaining:
                chunk = reader.take(min(READ_CHUNK_SIZE, remaining))
                writer.write(chunk)
                remaining -= len(chunk)
            tail = reader.take(padding + len(_CLOSE))
        if tail[:padding] != _ZEROS[:padding]:
            raise reader.error(size_start + 8 + size, "non-zero padding after file contents")
        if tail[padding:] != _CLOSE:
            index, problem = _first_difference(_CLOSE, tail[padding:])
            raise reader.error(size_start + 8 + size + padding + index, problem)
    except BaseException:
        writer.abort()
        raise
    return FileNode(name, writer.close(), size, executable)


def _check_room(reader: _Reader, size_start: int, due: int) -> None:
    """Refuse file contents that cannot fit the expected size before reading any of them."""
    limit = reader.limit
    if limit is not None and reader.offset + due > limit:
        raise InvalidArgumentError(
            f"NAR size: expected {limit} bytes, but the file whose size is at offset "
            f"{size_start} needs the archive to go on to at least {reader.offset + due}"
        )

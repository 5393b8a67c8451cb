"""Rendering a castore node as a Nix archive (NAR).

A NAR is what Nix hashes to name and verify store paths, so every byte must
match what ``nix-store --dump`` writes for the same tree: each string is a
little-endian u64 length, the bytes, and zero padding to a multiple of 8;
directory entries come sorted bytewise by name, all kinds interleaved. The
root node's own name does not appear. Contents are streamed from the blob
service and checked against the node on the way, since a NAR hash vouches for
them.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import blake3

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs import closure_member, fetch_closure
from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.errors import IntegrityError, NotFoundError


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _padding(length: int) -> bytes:
    return b"\0" * (-length % 8)


def nar_string(data: bytes) -> bytes:
    """A string as NARs (and Nix's export stream) frame it: length, bytes, zeros to 8."""
    return len(data).to_bytes(8, "little") + data + _padding(len(data))


_MAGIC = nar_string(b"nix-archive-1")
_OPEN = nar_string(b"(")
_CLOSE = nar_string(b")")
_REGULAR = _OPEN + nar_string(b"type") + nar_string(b"regular")
_EXECUTABLE = nar_string(b"executable") + nar_string(b"")
_CONTENTS = nar_string(b"contents")
_SYMLINK = _OPEN + nar_string(b"type") + nar_string(b"symlink") + nar_string(b"target")
_DIRECTORY = _OPEN + nar_string(b"type") + nar_string(b"directory")
_ENTRY = nar_string(b"entry") + _OPEN + nar_string(b"name")
_NODE = nar_string(b"node")
_ENTRY_END = _CLOSE


def write_nar(node: Node, out: Writable, blobs: BlobService, directories: DirectoryService) -> None:
    """Stream the NAR of ``node`` to ``out``; file contents are never held whole."""
    closure: dict[Digest, Directory] = (
        fetch_closure(node.digest, directories) if isinstance(node, DirectoryNode) else {}
    )
    out.write(_MAGIC)
    # Explicit stack rather than recursion: the tree's writer chose its depth.
    stack: list[bytes | Node] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.write(item)
        elif isinstance(item, FileNode):
            head = _REGULAR + (_EXECUTABLE if item.executable else b"") + _CONTENTS
            out.write(head + item.size.to_bytes(8, "little"))
            _write_contents(item, out, blobs)
            out.write(_padding(item.size) + _CLOSE)
        elif isinstance(item, DirectoryNode):
            directory = closure_member(closure, item)
            out.write(_DIRECTORY)
            stack.append(_CLOSE)
            for entry in sorted(directory.entries(), key=lambda n: n.name, reverse=True):
                stack.append(_ENTRY_END)
                stack.append(entry)
                stack.append(_ENTRY + nar_string(entry.name) + _NODE)
        else:
            out.write(_SYMLINK + nar_string(item.target) + _CLOSE)


def _write_contents(node: FileNode, out: Writable, blobs: BlobService) -> None:
    reader = blobs.open_read(node.digest)
    if reader is None:
        raise NotFoundError(f"blob {node.digest} of file {node.name!r} not found")
    hasher = blake3.blake3()
    remaining = node.size
    with reader:
        while remaining:
            chunk = reader.read(min(READ_CHUNK_SIZE, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
        longer = bool(reader.read(1))
    if remaining or longer or hasher.digest() != node.digest:
        raise IntegrityError(
            f"blob {node.digest} of file {node.name!r} does not match its node of {node.size} bytes"
        )


class _HashingSink:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


def nar_hash(node: Node, blobs: BlobService, directories: DirectoryService) -> tuple[bytes, int]:
    """The SHA-256 digest and byte length of the NAR, as Nix records them for a store path."""
    sink = _HashingSink()
    write_nar(node, sink, blobs, directories)
    return sink.sha256.digest(), sink.size

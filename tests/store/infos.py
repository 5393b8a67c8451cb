"""PathInfos for tests, their contents stored in a given castore first."""

from __future__ import annotations

import hashlib

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.nar import nar_hash
from builder.castore.nodes import FileNode, SymlinkNode
from builder.store import nixbase32
from builder.store.path_info import ContentAddress, HashKind, PathInfo, Signature
from builder.store.store_path import DIGEST_SIZE, StorePath
from tests.blob_bytes import put_bytes


def store_path(name: str, seed: str | None = None) -> StorePath:
    """A well-formed store path whose digest follows from ``seed`` (default: the name)."""
    digest = hashlib.sha256((seed or name).encode()).digest()[:DIGEST_SIZE]
    return StorePath(nixbase32.encode(digest), name)


def symlink_info(name: str, target: bytes = b"/dev/null", seed: str | None = None) -> PathInfo:
    """A path whose contents are a symlink: nothing in the castore to store first."""
    path = store_path(name, seed)
    return PathInfo(path, SymlinkNode(path.basename.encode(), target), bytes(32), 1, ())


def full_info(blobs: BlobService, directories: DirectoryService, name: str = "full") -> PathInfo:
    """A directory path with every optional field set, its tree stored and NAR hashed."""
    path = store_path(name)
    data = f"contents of {name}\n".encode()
    leaf = Directory.of(
        [FileNode(b"run", put_bytes(blobs, data), len(data), True), SymlinkNode(b"l", b"run")]
    )
    directories.put(leaf)
    node = leaf.node(path.basename.encode())
    sha256, size = nar_hash(node, blobs, directories)
    return PathInfo(
        path=path,
        node=node,
        nar_sha256=sha256,
        nar_size=size,
        references=(store_path("dep-a"), path, store_path("dep-b")),
        deriver=store_path(f"{name}.drv"),
        signatures=(Signature("cache.example.org-1", bytes(range(64))), Signature("k2", b"\0")),
        ca=ContentAddress(HashKind.NAR_SHA256, hashlib.sha256(data).digest()),
    )

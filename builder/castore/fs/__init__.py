"""The bridge between castore trees and a real filesystem, and their NAR rendering.

``ingest`` turns a path into a root node, ``materialise`` turns a node back
into a path, and ``nar`` renders a node the way Nix serialises a store path.
``descent`` is how every walk of a tree on disk moves through it (by directory
descriptors, without recursion), and ``batches`` how a walk hands its files to
a thread pool.
The helpers here are what the latter two share: a tree is always fetched as
one closure before anything is written.
"""

from __future__ import annotations

from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directory import Directory
from builder.castore.nodes import DirectoryNode
from builder.errors import IntegrityError

EMPTY_DIRECTORY = Directory()


def display_path(path: bytes) -> str:
    """A printable form of a path that need not be UTF-8."""
    return path.decode("utf-8", "backslashreplace")


def fetch_closure(root: Digest, directories: DirectoryService) -> dict[Digest, Directory]:
    """Every directory below ``root`` keyed by its recomputed digest, from one recursive get.

    Keying by the recomputed digest means a backend returning altered
    directories leaves a hole that is reported, instead of a wrong tree.
    """
    if root == EMPTY_DIRECTORY.digest:
        return {root: EMPTY_DIRECTORY}
    closure = {directory.digest: directory for directory in directories.get_recursive(root)}
    if root not in closure:
        raise IntegrityError(f"directory service returned a different root for {root}")
    return closure


def closure_member(closure: dict[Digest, Directory], node: DirectoryNode) -> Directory:
    directory = closure.get(node.digest)
    if directory is None:
        raise IntegrityError(
            f"directory {node.digest} ({node.name!r}) is missing from its closure "
            "or was returned with other contents"
        )
    if directory.size != node.size:
        raise IntegrityError(
            f"directory {node.digest} ({node.name!r}) has size {directory.size}, "
            f"but is referred to with size {node.size}"
        )
    return directory

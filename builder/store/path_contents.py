"""What a PathInfo's root stands for in the castore: checked before a record is kept.

A record whose blobs or directories are missing would later fail every NAR
dump of its path, long after the client that sent it has gone; so a server
refuses such a record when it arrives, naming the first missing piece. The
NAR hash and size a record claims are computed here the same way Nix does.
"""

from __future__ import annotations

import os
from collections import deque

from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.nar import nar_hash
from builder.castore.nodes import DirectoryNode, FileNode, Node, validate_root_node
from builder.errors import FailedPreconditionError
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService


def _joined(parent: str, name: bytes) -> str:
    return f"{parent}/{os.fsdecode(name)}"


def check_contents_present(node: Node, blobs: BlobService, directories: DirectoryService) -> None:
    """Raise FailedPreconditionError naming the first blob or directory not in the castore.

    The walk is breadth-first over an explicit queue and visits each distinct
    directory once, so a deep or widely shared tree costs one lookup per
    directory and one per distinct blob.
    """
    root = os.fsdecode(node.name)
    if isinstance(node, FileNode):
        if not blobs.has(node.digest):
            raise FailedPreconditionError(f"{root}: blob {node.digest} is not in the castore")
        return
    if not isinstance(node, DirectoryNode):
        return
    queue: deque[tuple[str, Digest]] = deque([(root, node.digest)])
    seen_directories = {node.digest}
    seen_blobs: set[Digest] = set()
    while queue:
        where, digest = queue.popleft()
        directory = directories.get(digest)
        if directory is None:
            raise FailedPreconditionError(f"{where}: directory {digest} is not in the castore")
        for file in directory.files:
            if file.digest not in seen_blobs:
                if not blobs.has(file.digest):
                    raise FailedPreconditionError(
                        f"{_joined(where, file.name)}: blob {file.digest} is not in the castore"
                    )
                seen_blobs.add(file.digest)
        for child in directory.directories:
            if child.digest not in seen_directories:
                seen_directories.add(child.digest)
                queue.append((_joined(where, child.name), child.digest))


def put_checked(
    pathinfos: PathInfoService,
    blobs: BlobService,
    directories: DirectoryService,
    info: PathInfo,
) -> PathInfo:
    """Validate ``info``, make sure its contents are stored, then record it."""
    info.validate()
    check_contents_present(info.node, blobs, directories)
    return pathinfos.put(info)


def calculate_nar(
    node: Node, blobs: BlobService, directories: DirectoryService
) -> tuple[bytes, int]:
    """The NAR SHA-256 and size of the tree ``node`` stands for, contents checked first."""
    validate_root_node(node, "node")
    check_contents_present(node, blobs, directories)
    return nar_hash(node, blobs, directories)

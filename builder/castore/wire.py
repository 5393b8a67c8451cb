"""Translation between the node model and the two wire families.

Tvix and Snix encode castore messages identically; only message and oneof
names differ. Everything here is therefore written once and parameterised by
the family's generated module.
"""

from __future__ import annotations

from enum import Enum
from types import ModuleType
from typing import Any

from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from builder.errors import InvalidArgumentError
from builder.proto.snix.castore.protos import castore_pb2 as snix_castore
from builder.proto.tvix.castore.protos import castore_pb2 as tvix_castore


class Family(Enum):
    TVIX = "tvix"
    SNIX = "snix"

    @property
    def castore(self) -> ModuleType:
        return tvix_castore if self is Family.TVIX else snix_castore

    def message_names(self) -> tuple[str, str, str, str]:
        """Names of the (directory, file, symlink, root) node messages."""
        if self is Family.TVIX:
            return "DirectoryNode", "FileNode", "SymlinkNode", "Node"
        return "DirectoryEntry", "FileEntry", "SymlinkEntry", "Entry"


def directory_to_proto(directory: Directory, family: Family = Family.TVIX) -> Any:
    """The family's message, read from the canonical bytes both families share."""
    return family.castore.Directory.FromString(directory.encoded)


def _digest(value: bytes, where: str) -> Digest:
    return Digest.from_field(value, where)


def directory_from_proto(msg: Any) -> Directory:
    """Convert a Directory of either family; digest lengths are checked here."""
    return Directory(
        tuple(
            DirectoryNode(d.name, _digest(d.digest, f"directories[{i}].digest"), d.size)
            for i, d in enumerate(msg.directories)
        ),
        tuple(
            FileNode(f.name, _digest(f.digest, f"files[{i}].digest"), f.size, f.executable)
            for i, f in enumerate(msg.files)
        ),
        tuple(SymlinkNode(s.name, s.target) for s in msg.symlinks),
    )


# The most entries one Directory message may carry. Real trees stay far below
# it (the largest directories in package sets hold tens of thousands of
# entries), while converting and validating a message costs about 8 µs and
# 160 bytes of memory per entry (1.5 million took 11.7 s and 235 MiB), so
# 100,000 entries bound one message to under a second and about 16 MiB.
DEFAULT_MAX_DIRECTORY_ENTRIES = 100_000


def entry_count(message: Any) -> int:
    """Entries of a Directory message of either family, counted without converting it."""
    return len(message.directories) + len(message.files) + len(message.symlinks)


def check_entry_count(message: Any, limit: int) -> None:
    """Refuse a decoded Directory message with more entries than ``limit``, naming its digest.

    The digest is only computed for a message being refused.
    """
    count = entry_count(message)
    if count > limit:
        digest = Digest.of(message.SerializeToString(deterministic=True))
        raise InvalidArgumentError(
            f"directory {digest} has {count} entries, more than the limit of {limit}"
        )


def decode_directory(data: bytes) -> Directory:
    return directory_from_proto(tvix_castore.Directory.FromString(data))


def node_to_proto(node: Node, family: Family = Family.TVIX) -> Any:
    mod = family.castore
    dn, fn, sn, root = family.message_names()
    if isinstance(node, DirectoryNode):
        inner = {"directory": getattr(mod, dn)(name=node.name, digest=node.digest, size=node.size)}
    elif isinstance(node, FileNode):
        inner = {
            "file": getattr(mod, fn)(
                name=node.name, digest=node.digest, size=node.size, executable=node.executable
            )
        }
    else:
        inner = {"symlink": getattr(mod, sn)(name=node.name, target=node.target)}
    return getattr(mod, root)(**inner)


def node_from_proto(msg: Any, where: str = "node") -> Node:
    """Convert a root Node/Entry of either family, rejecting an unset oneof."""
    kind = msg.WhichOneof(msg.DESCRIPTOR.oneofs[0].name)
    if kind == "directory":
        d = msg.directory
        return DirectoryNode(d.name, _digest(d.digest, f"{where}.directory.digest"), d.size)
    if kind == "file":
        f = msg.file
        return FileNode(f.name, _digest(f.digest, f"{where}.file.digest"), f.size, f.executable)
    if kind == "symlink":
        return SymlinkNode(msg.symlink.name, msg.symlink.target)
    raise InvalidArgumentError(f"{where}: no node kind set")

"""The three node kinds of a castore tree and the rules each must satisfy.

Nodes are plain frozen values, independent of either protobuf family, so that
the store, the build service and the filesystem bridge share one model; the
translation to and from the wire lives in ``builder.castore.wire``.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.castore.digest import DIGEST_SIZE, Digest
from builder.errors import InvalidArgumentError

MAX_NAME_LENGTH = 255
MAX_TARGET_LENGTH = 4095


def check_name(name: bytes, where: str) -> None:
    """Reject names that could not be a single path component on disk."""
    if not name:
        raise InvalidArgumentError(f"{where}: name is empty")
    if name in (b".", b".."):
        raise InvalidArgumentError(f"{where}: name {name!r} is not allowed")
    if b"/" in name:
        raise InvalidArgumentError(f"{where}: name {name!r} contains '/'")
    if b"\0" in name:
        raise InvalidArgumentError(f"{where}: name {name!r} contains NUL")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"{where}: name is {len(name)} bytes, more than {MAX_NAME_LENGTH}"
        )


def _check_digest(digest: bytes, where: str) -> None:
    if len(digest) != DIGEST_SIZE:
        raise InvalidArgumentError(
            f"{where}: digest must be {DIGEST_SIZE} bytes, got {len(digest)}"
        )


@dataclass(frozen=True, slots=True)
class DirectoryNode:
    name: bytes
    digest: Digest
    size: int

    def validate(self, where: str = "directory") -> None:
        check_name(self.name, where)
        _check_digest(self.digest, f"{where} {self.name!r}")

    def renamed(self, name: bytes) -> DirectoryNode:
        return DirectoryNode(name, self.digest, self.size)


@dataclass(frozen=True, slots=True)
class FileNode:
    name: bytes
    digest: Digest
    size: int
    executable: bool = False

    def validate(self, where: str = "file") -> None:
        check_name(self.name, where)
        _check_digest(self.digest, f"{where} {self.name!r}")

    def renamed(self, name: bytes) -> FileNode:
        return FileNode(name, self.digest, self.size, self.executable)


@dataclass(frozen=True, slots=True)
class SymlinkNode:
    name: bytes
    target: bytes

    def validate(self, where: str = "symlink") -> None:
        check_name(self.name, where)
        if not self.target:
            raise InvalidArgumentError(f"{where} {self.name!r}: target is empty")
        if b"\0" in self.target:
            raise InvalidArgumentError(f"{where} {self.name!r}: target contains NUL")
        if len(self.target) > MAX_TARGET_LENGTH:
            raise InvalidArgumentError(
                f"{where} {self.name!r}: target is {len(self.target)} bytes, "
                f"more than {MAX_TARGET_LENGTH}"
            )

    def renamed(self, name: bytes) -> SymlinkNode:
        return SymlinkNode(name, self.target)


Node = DirectoryNode | FileNode | SymlinkNode


def validate_root_node(node: Node, where: str = "root node") -> None:
    """Root nodes may carry an empty name (Snix outputs do); otherwise as in a Directory."""
    if node.name:
        node.validate(where)
    else:
        node.renamed(b"x").validate(where)

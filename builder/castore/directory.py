"""The Directory message: its canonical encoding, digest, size and validity."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from builder.castore.digest import Digest
from builder.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from builder.errors import InvalidArgumentError
from builder.proto.tvix.castore.protos import castore_pb2


@dataclass(frozen=True)
class Directory:
    """One level of a tree; children are referenced by digest, never embedded."""

    directories: tuple[DirectoryNode, ...] = ()
    files: tuple[FileNode, ...] = ()
    symlinks: tuple[SymlinkNode, ...] = ()

    @classmethod
    def of(cls, nodes: list[Node]) -> Directory:
        """Sort mixed nodes into the three lists, ordered by name as the digest requires."""
        ordered = sorted(nodes, key=lambda n: n.name)
        return cls(
            tuple(n for n in ordered if isinstance(n, DirectoryNode)),
            tuple(n for n in ordered if isinstance(n, FileNode)),
            tuple(n for n in ordered if isinstance(n, SymlinkNode)),
        )

    def entries(self) -> Iterator[Node]:
        yield from self.directories
        yield from self.files
        yield from self.symlinks

    def __len__(self) -> int:
        return len(self.directories) + len(self.files) + len(self.symlinks)

    @cached_property
    def size(self) -> int:
        """The deployed size rule: entries plus the sizes of child directories."""
        return (
            len(self)
            + len(self.files)
            + len(self.symlinks)
            + sum(1 + d.size for d in self.directories)
        )

    @cached_property
    def encoded(self) -> bytes:
        """The canonical bytes the digest is taken over.

        Written through Tvix's message because both families encode a Directory
        to the same bytes; ``builder.castore.wire`` reads these back as either.
        """
        message = castore_pb2.Directory(
            directories=[
                castore_pb2.DirectoryNode(name=d.name, digest=d.digest, size=d.size)
                for d in self.directories
            ],
            files=[
                castore_pb2.FileNode(
                    name=f.name, digest=f.digest, size=f.size, executable=f.executable
                )
                for f in self.files
            ],
            symlinks=[castore_pb2.SymlinkNode(name=s.name, target=s.target) for s in self.symlinks],
        )
        return message.SerializeToString(deterministic=True)

    @cached_property
    def digest(self) -> Digest:
        return Digest.of(self.encoded)

    def node(self, name: bytes) -> DirectoryNode:
        """The entry a parent uses to refer to this directory under ``name``."""
        return DirectoryNode(name, self.digest, self.size)

    def lookup(self, name: bytes) -> Node | None:
        for node in self.entries():
            if node.name == name:
                return node
        return None

    def validate(self) -> None:
        """Check every rule that can be checked without looking at children."""
        seen: set[bytes] = set()
        for kind, nodes in (
            ("directories", self.directories),
            ("files", self.files),
            ("symlinks", self.symlinks),
        ):
            previous: bytes | None = None
            for node in nodes:
                node.validate(kind[:-1] if kind != "directories" else "directory")
                if previous is not None and node.name <= previous:
                    problem = "duplicate" if node.name == previous else "unsorted"
                    raise InvalidArgumentError(
                        f"{kind}: {problem} name {node.name!r} after {previous!r}"
                    )
                if node.name in seen:
                    raise InvalidArgumentError(f"{kind}: duplicate name {node.name!r} across lists")
                seen.add(node.name)
                previous = node.name
        if self.size >= 2**64:
            raise InvalidArgumentError("directory size overflows uint64")

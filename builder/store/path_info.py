"""What is known about a store path once its contents are in the castore.

A PathInfo ties a Nix store path to its root node and carries the facts Nix
keeps for the path: NAR hash and size, references, deriver, signatures and,
for content-addressed paths, how the address was computed. Nix checks the NAR
hash of every path it receives, so these facts must describe the node exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from builder.castore.nodes import Node
from builder.errors import InvalidArgumentError
from builder.store import nixbase32
from builder.store.store_path import StorePath

NAR_SHA256_SIZE = 32


class HashKind(IntEnum):
    """How a content address was computed; the numbers are the wire enum's."""

    NAR_SHA256 = 0
    NAR_SHA1 = 1
    NAR_SHA512 = 2
    NAR_MD5 = 3
    TEXT_SHA256 = 4
    FLAT_SHA1 = 5
    FLAT_MD5 = 6
    FLAT_SHA256 = 7
    FLAT_SHA512 = 8


# Text prefix (as in ``fixed:r:sha256:``) and digest size of each kind.
_CA_TEXT: dict[HashKind, tuple[str, int]] = {
    HashKind.NAR_SHA256: ("fixed:r:sha256", 32),
    HashKind.NAR_SHA1: ("fixed:r:sha1", 20),
    HashKind.NAR_SHA512: ("fixed:r:sha512", 64),
    HashKind.NAR_MD5: ("fixed:r:md5", 16),
    HashKind.TEXT_SHA256: ("text:sha256", 32),
    HashKind.FLAT_SHA1: ("fixed:sha1", 20),
    HashKind.FLAT_MD5: ("fixed:md5", 16),
    HashKind.FLAT_SHA256: ("fixed:sha256", 32),
    HashKind.FLAT_SHA512: ("fixed:sha512", 64),
}
_CA_BY_PREFIX = {prefix: (kind, size) for kind, (prefix, size) in _CA_TEXT.items()}


@dataclass(frozen=True)
class ContentAddress:
    kind: HashKind
    digest: bytes

    @classmethod
    def parse(cls, text: str, where: str = "content address") -> ContentAddress:
        """Nix's text form, the digest in base-32 (``fixed:r:sha256:<nixbase32>``)."""
        prefix, _, encoded = text.rpartition(":")
        if prefix not in _CA_BY_PREFIX:
            raise InvalidArgumentError(f"{where}: {text!r} is not a content address Nix writes")
        kind, size = _CA_BY_PREFIX[prefix]
        return cls(kind, nixbase32.decode(encoded, size, where))

    def validate(self, where: str = "content address") -> None:
        size = _CA_TEXT[HashKind(self.kind)][1]
        if len(self.digest) != size:
            raise InvalidArgumentError(
                f"{where}: {HashKind(self.kind).name} digest is {len(self.digest)} bytes, "
                f"expected {size}"
            )

    def __str__(self) -> str:
        return f"{_CA_TEXT[self.kind][0]}:{nixbase32.encode(self.digest)}"


@dataclass(frozen=True)
class Signature:
    """A ``name:base64`` signature as Nix lists it, kept as name and raw bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class PathInfo:
    path: StorePath
    node: Node
    nar_sha256: bytes
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None = None
    signatures: tuple[Signature, ...] = ()
    ca: ContentAddress | None = None

    def validate(self, where: str = "path info") -> None:
        """Refuse facts that cannot describe the path: Nix would reject what we serve."""
        if self.node.name != os.fsencode(self.path.basename):
            raise InvalidArgumentError(
                f"{where}: node name {self.node.name!r} is not the store path's basename "
                f"{self.path.basename!r}"
            )
        self.node.validate(f"{where}.node")
        if len(self.nar_sha256) != NAR_SHA256_SIZE:
            raise InvalidArgumentError(
                f"{where}: nar_sha256 is {len(self.nar_sha256)} bytes, expected {NAR_SHA256_SIZE}"
            )
        if self.nar_size <= 0:
            raise InvalidArgumentError(f"{where}: nar_size must be positive")
        if len(set(self.references)) != len(self.references):
            raise InvalidArgumentError(f"{where}: references list a path twice")
        if self.deriver is not None and not self.deriver.name.endswith(".drv"):
            raise InvalidArgumentError(f"{where}: deriver {self.deriver} is not a .drv path")
        if self.ca is not None:
            self.ca.validate(f"{where}.ca")

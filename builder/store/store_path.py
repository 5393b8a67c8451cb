"""Nix store paths: ``/nix/store/<32 nixbase32 characters>-<name>``.

Every path that crosses from a derivation or the Nix database into a build
request is checked here first, because its basename becomes a node name and a
mount point inside the sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import InvalidArgumentError
from builder.store import nixbase32

STORE_DIR = "/nix/store"
DIGEST_SIZE = 20
MAX_NAME_LENGTH = 211
HASH_PART_LENGTH = nixbase32.encoded_length(DIGEST_SIZE)
_NAME = re.compile(r"[A-Za-z0-9+\-._?=]+")
_HASH_PART = re.compile(f"[{nixbase32.ALPHABET}]{{{HASH_PART_LENGTH}}}")


def check_digest(digest: bytes, where: str = "digest") -> bytes:
    """A store path digest as a client sent it: exactly 20 bytes, or refused before any lookup."""
    if len(digest) != DIGEST_SIZE:
        raise InvalidArgumentError(f"{where}: {len(digest)} bytes, expected {DIGEST_SIZE}")
    return digest


@dataclass(frozen=True, order=True)
class StorePath:
    hash_part: str
    name: str

    @classmethod
    def parse(cls, text: str, where: str = "store path") -> StorePath:
        prefix = STORE_DIR + "/"
        if not text.startswith(prefix):
            raise InvalidArgumentError(f"{where}: {text!r} is not in {STORE_DIR}")
        base = text[len(prefix) :]
        hash_part, dash, name = base[:HASH_PART_LENGTH], base[HASH_PART_LENGTH:][:1], base[33:]
        if not _HASH_PART.fullmatch(hash_part) or dash != "-":
            raise InvalidArgumentError(f"{where}: {text!r} does not start with a hash part")
        if not _NAME.fullmatch(name) or name.startswith(".") or len(name) > MAX_NAME_LENGTH:
            raise InvalidArgumentError(f"{where}: {text!r} has an invalid name {name!r}")
        return cls(hash_part, name)

    @classmethod
    def from_basename(cls, basename: str, where: str = "store path") -> StorePath:
        return cls.parse(f"{STORE_DIR}/{basename}", where)

    @classmethod
    def from_digest(cls, digest: bytes, name: str, where: str = "store path") -> StorePath:
        """The path whose hash part encodes ``digest``, its name checked like a parsed one."""
        hash_part = nixbase32.encode(check_digest(digest, f"{where}.digest"))
        return cls.from_basename(f"{hash_part}-{name}", where)

    @property
    def digest(self) -> bytes:
        """The 20 bytes the hash part encodes: how PathInfo services look a path up."""
        return nixbase32.decode(self.hash_part, DIGEST_SIZE)

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    def __str__(self) -> str:
        return f"{STORE_DIR}/{self.basename}"

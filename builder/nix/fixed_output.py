"""Checking a fixed-output derivation's result against the hash it declared.

A fixed output is trusted because of this check (it may use the network), so
it runs on the stored node, exactly what will be handed to Nix. ``flat``
hashes the single regular file's contents, ``recursive`` its NAR.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.nar import write_nar
from builder.castore.nodes import FileNode, Node
from builder.errors import BuildFailedError, InvalidArgumentError, NotFoundError
from builder.nix.derivation import DerivationOutput
from builder.store.store_path import StorePath

ALGORITHMS = {"sha1": 20, "sha256": 32, "sha512": 64}


def sri(algo: str, digest: bytes) -> str:
    return f"{algo}-{base64.b64encode(digest).decode()}"


def verify_fixed_output(
    drv_path: StorePath,
    output: DerivationOutput,
    node: Node,
    blobs: BlobService,
    directories: DirectoryService,
) -> None:
    recursive, algo = output.hash_algo.startswith("r:"), output.hash_algo.removeprefix("r:")
    if algo not in ALGORITHMS:
        raise InvalidArgumentError(f"{drv_path}: output {output.name}: unsupported hash {algo!r}")
    try:
        expected = bytes.fromhex(output.hash)
    except ValueError:
        raise InvalidArgumentError(f"{drv_path}: output hash {output.hash!r} is not hex") from None
    if len(expected) != ALGORITHMS[algo]:
        raise InvalidArgumentError(f"{drv_path}: output hash has the wrong length for {algo}")
    hasher = hashlib.new(algo)
    if recursive:
        write_nar(node, _Updating(hasher), blobs, directories)
    else:
        if not isinstance(node, FileNode) or node.executable:
            raise BuildFailedError(
                f"output path '{output.path}' should be a non-executable regular file "
                "since recursive hashing is not enabled (outputHashMode=flat)"
            )
        _hash_blob(node, hasher, blobs)
    got = hasher.digest()
    if got != expected:
        raise BuildFailedError(
            f"hash mismatch in fixed-output derivation '{drv_path}':\n"
            f"  specified: {sri(algo, expected)}\n"
            f"     got:    {sri(algo, got)}"
        )


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


class _Updating:
    """Lets a hash object stand where the NAR writer expects a file."""

    def __init__(self, hasher: _Hasher) -> None:
        self._hasher = hasher

    def write(self, data: bytes, /) -> None:
        self._hasher.update(data)


def _hash_blob(node: FileNode, hasher: _Hasher, blobs: BlobService) -> None:
    reader = blobs.open_read(node.digest)
    if reader is None:
        raise NotFoundError(f"blob {node.digest} of a fixed output not found")
    with reader:
        while chunk := reader.read(READ_CHUNK_SIZE):
            hasher.update(chunk)

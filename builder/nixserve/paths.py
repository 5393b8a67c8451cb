"""Which store paths are valid here, and what they refer to, from the PathInfo service."""

from __future__ import annotations

from collections.abc import Iterable

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.nodes import FileNode
from builder.errors import InvalidArgumentError, NotFoundError
from builder.nix.derivation import Derivation, parse_derivation
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService, lookup
from builder.store.store_path import StorePath

# A derivation file Nix writes is kilobytes, rarely megabytes; more is not one.
MAX_DERIVATION_SIZE = 64 << 20


def sorted_paths(paths: Iterable[StorePath]) -> list[StorePath]:
    """As Nix orders a set of store paths: by basename."""
    return sorted(set(paths), key=lambda p: p.basename)


class ValidPaths:
    def __init__(self, pathinfos: PathInfoService, blobs: BlobService) -> None:
        self._pathinfos = pathinfos
        self._blobs = blobs

    def info(self, path: StorePath) -> PathInfo | None:
        return lookup(self._pathinfos, path)

    def require(self, path: StorePath) -> PathInfo:
        info = self.info(path)
        if info is None:
            raise NotFoundError(f"path '{path}' is not valid")
        return info

    def closure(self, roots: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        """Every path reachable from ``roots`` by references; all must be valid."""
        found: dict[StorePath, PathInfo] = {}
        pending = list(roots)
        while pending:
            path = pending.pop()
            if path in found:
                continue
            info = self.require(path)
            found[path] = info
            pending.extend(r for r in info.references if r not in found)
        return found

    def derivation(self, path: StorePath) -> Derivation:
        """A ``.drv`` file stored here, parsed."""
        if not path.name.endswith(".drv"):
            raise InvalidArgumentError(f"'{path}' is not a derivation")
        node = self.require(path).node
        if not isinstance(node, FileNode):
            raise InvalidArgumentError(f"derivation '{path}' is not a regular file")
        if node.size > MAX_DERIVATION_SIZE:
            raise InvalidArgumentError(
                f"derivation '{path}' is {node.size} bytes, more than {MAX_DERIVATION_SIZE}"
            )
        reader = self._blobs.open_read(node.digest)
        if reader is None:
            raise NotFoundError(f"contents of derivation '{path}' are missing ({node.digest})")
        with reader:
            data = bytearray()
            while chunk := reader.read(READ_CHUNK_SIZE):
                data += chunk
                if len(data) > node.size:
                    break
        if len(data) != node.size:
            raise InvalidArgumentError(f"derivation '{path}': stored contents have the wrong size")
        return parse_derivation(bytes(data), str(path))

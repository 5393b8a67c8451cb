"""The PathInfo service: store-path metadata by the 20-byte digest of the path.

Every backend (memory, SQLite, object store, a remote server) offers exactly
this, so Nix interop, the servers and ``builder-nix-serve`` work on any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from builder.store.path_info import PathInfo


class PathInfoService(Protocol):
    def get(self, digest: bytes) -> PathInfo | None:
        """The record of the store path whose hash part encodes ``digest``, if known."""
        ...

    def put(self, info: PathInfo) -> PathInfo:
        """Store ``info`` durably (after validating it) and return what is now stored."""
        ...

    def list(self) -> Iterator[PathInfo]: ...

    def close(self) -> None: ...

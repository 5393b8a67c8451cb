"""The PathInfo service: store-path metadata by the 20-byte digest of the path.

Every backend (memory, SQLite, object store, a remote server) offers exactly
this, so Nix interop, the servers and ``builder-nix-serve`` work on any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from builder.store.path_info import PathInfo
from builder.store.store_path import StorePath


class PathInfoService(Protocol):
    def get(self, digest: bytes) -> PathInfo | None:
        """The record of the store path whose hash part encodes ``digest``, if known."""
        ...

    def put(self, info: PathInfo) -> PathInfo:
        """Store ``info`` durably (after validating it) and return what is now stored."""
        ...

    def list(self) -> Iterator[PathInfo]: ...

    def close(self) -> None: ...


def lookup(pathinfos: PathInfoService, path: StorePath) -> PathInfo | None:
    """The record of exactly ``path``.

    Records are found by digest, and a record put under the same digest with
    another name (which no honest store produces) must not stand in for it.
    """
    info = pathinfos.get(path.digest)
    return info if info is not None and info.path == path else None

"""Which store paths are valid here, and what they refer to, from the PathInfo service."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


LOCK_FILE = "valid-paths.lock"


class RecordingLock:
    """Held while a path is checked and made valid, so that only one writer does it.

    The sessions of one process (a server's hand-off sessions) take a lock of
    the process; on a data directory, which several ``builder-nix-serve``
    processes and a server may share, also an ``flock`` on a file there.
    Through a remote server nothing here can exclude its other clients.
    """

    _sessions = threading.Lock()

    def __init__(self, data_dir: Path | None) -> None:
        self._file = None if data_dir is None else data_dir / LOCK_FILE

    @contextmanager
    def held(self) -> Iterator[None]:
        with RecordingLock._sessions:
            if self._file is None:
                yield
                return
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._file, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)


class ValidPaths:
    def __init__(
        self, pathinfos: PathInfoService, blobs: BlobService, recording: RecordingLock
    ) -> None:
        self._pathinfos = pathinfos
        self._blobs = blobs
        self._recording = recording

    def info(self, path: StorePath) -> PathInfo | None:
        return lookup(self._pathinfos, path)

    def record(self, info: PathInfo) -> None:
        """Make ``info`` valid unless its path already is.

        A valid path never changes, as in Nix: an upload or a build that
        finishes after another session made the same path valid (its NAR
        could take as long as its client liked) leaves that one in place,
        which clients may have fetched and checked already.
        """
        with self._recording.held():
            if self.info(info.path) is None:
                self._pathinfos.put(info)

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

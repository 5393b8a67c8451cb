"""What every backend's blob writer does alike, so each backend writes only its own part.

A writer hashes the bytes as they arrive, since the digest must be known the
moment the blob is committed; and it serves one blob only, so any use after
``close`` or ``abort`` is refused rather than silently starting another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import blake3

from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError


class HashingBlobWriter(ABC):
    """A ``BlobWriter`` whose subclasses keep, commit and discard the bytes."""

    def __init__(self) -> None:
        self._hasher = blake3.blake3()
        self._done = False

    def write(self, data: bytes | memoryview) -> int:
        self._check_open()
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._keep(view)
        return len(view)

    def close(self) -> Digest:
        self._check_open()
        self._done = True
        digest = Digest(self._hasher.digest())
        self._commit(digest)
        return digest

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()

    def _check_open(self) -> None:
        if self._done:
            raise InvalidArgumentError("blob writer already closed")

    @abstractmethod
    def _keep(self, data: memoryview) -> None:
        """Hold on to the next bytes of the blob; a writer that cannot goes on failing."""

    @abstractmethod
    def _commit(self, digest: Digest) -> None:
        """Make the bytes kept the blob ``digest``, or raise and store nothing."""

    @abstractmethod
    def _discard(self) -> None:
        """Give up the bytes kept so far; called once at most, and never after a commit."""

"""What the readers of blobs of known size share: positions, seeking and sized reads.

A blob's size is known before its first byte is read, so a read can be sized
to what is left instead of to what was asked: a caller asking for a large
read never makes the reader allocate more than the blob. Seeking only moves
the position; each reader decides how a read away from its stream is served
and checked.
"""

from __future__ import annotations

import io

from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError


class SizedBlobReader(io.RawIOBase):
    """A seekable reader of the blob ``digest`` of ``size`` bytes; subclasses read."""

    def __init__(self, digest: Digest, size: int) -> None:
        super().__init__()
        self._digest = digest
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise InvalidArgumentError(f"invalid whence {whence}")
        if base + offset < 0:
            raise InvalidArgumentError(f"cannot seek to negative position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        self._check_open()
        buffer = bytearray(min(size, max(self._size - self._pos, 0)))
        count = self.readinto(buffer)
        del buffer[count:]
        return bytes(buffer)

    def readall(self) -> bytes:
        return self.read(max(self._size - self._pos, 0))

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidArgumentError(f"reader of blob {self._digest} is closed")

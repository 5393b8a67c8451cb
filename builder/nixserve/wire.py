"""The serve protocol's framing: little-endian u64 numbers and zero-padded strings.

This module imports only the standard library: the entry point answers the
handshake with it before anything heavier is loaded. One buffered reader of
our own carries the whole connection, so a NAR read by the ingest code and
the commands around it come from the same stream without loss or overlap.
Every length a client claims is checked against a bound before anything is
allocated for it.
"""

from __future__ import annotations

import os
import struct

SERVE_MAGIC_1 = 0x390C9DEB
SERVE_MAGIC_2 = 0x5452EECB
SERVE_PROTOCOL_VERSION = 0x207

# Store paths are at most 11 + 32 + 1 + 211 bytes; anything a few KiB long is not one.
MAX_PATH_LENGTH = 4096
MAX_STRING_LENGTH = 64 << 10
MAX_LIST_ITEMS = 1 << 20
# All strings of one list together: the paths of a real closure take a few MiB,
# while the per-item bounds alone would let one list hold gigabytes.
MAX_LIST_BYTES = 64 << 20
MAX_ENV_VALUE_LENGTH = 64 << 20

_READ_SIZE = 64 << 10
_U64 = struct.Struct("<Q")


class ProtocolError(Exception):
    """The peer broke the framing; the connection cannot continue."""


class UnexpectedEndError(ProtocolError):
    def __init__(self, field: str) -> None:
        super().__init__(f"unexpected end of input while reading {field}")


class WireReader:
    """Reads the connection from a file descriptor, never further than asked.

    ``read`` behaves like a buffered file's: it returns exactly ``size``
    bytes unless the stream ends first.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = os.read(self._fd, _READ_SIZE)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def at_end(self) -> bool:
        """Whether the stream ends here (blocks until a byte or the end arrives)."""
        return not self._buffer and not self._fill()

    def read(self, size: int) -> bytes:
        if size < 0:
            raise ValueError("read size must not be negative")
        if len(self._buffer) >= size:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        parts = [bytes(self._buffer)]
        have = len(self._buffer)
        self._buffer.clear()
        while have < size:
            chunk = os.read(self._fd, min(size - have, _READ_SIZE)) if not self._eof else b""
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def exact(self, size: int, field: str) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise UnexpectedEndError(field)
        return data

    def skip(self, size: int, field: str) -> None:
        """Consume ``size`` bytes without keeping them (a payload already stored)."""
        while size:
            step = min(size, _READ_SIZE)
            self.exact(step, field)
            size -= step

    def u64(self, field: str) -> int:
        return _U64.unpack(self.exact(8, field))[0]

    def boolean(self, field: str) -> bool:
        return self.u64(field) != 0

    def raw_string(self, field: str, limit: int = MAX_STRING_LENGTH) -> bytes:
        length = self.u64(f"{field} length")
        if length > limit:
            raise ProtocolError(f"{field}: {length} bytes, more than the limit of {limit}")
        data = self.exact(length, field)
        padding = -length % 8
        if padding and self.exact(padding, f"{field} padding") != b"\0" * padding:
            raise ProtocolError(f"{field}: non-zero padding after the string")
        return data

    def string(self, field: str, limit: int = MAX_STRING_LENGTH) -> str:
        """Nix strings are bytes; undecodable ones survive as surrogate escapes."""
        return self.raw_string(field, limit).decode("utf-8", "surrogateescape")

    def path(self, field: str) -> str:
        return self.string(field, MAX_PATH_LENGTH)

    def count(self, field: str, limit: int = MAX_LIST_ITEMS) -> int:
        items = self.u64(f"{field} count")
        if items > limit:
            raise ProtocolError(f"{field}: {items} items, more than the limit of {limit}")
        return items

    def strings(self, field: str, limit: int = MAX_STRING_LENGTH) -> list[str]:
        """A list of strings, each within ``limit`` and all within ``MAX_LIST_BYTES``."""
        items = []
        total = 0
        for i in range(self.count(field)):
            item = self.raw_string(f"{field}[{i}]", limit)
            total += len(item)
            if total > MAX_LIST_BYTES:
                raise ProtocolError(f"{field}: more than {MAX_LIST_BYTES} bytes in all")
            items.append(item.decode("utf-8", "surrogateescape"))
        return items

    def paths(self, field: str) -> list[str]:
        return self.strings(field, MAX_PATH_LENGTH)


class WireWriter:
    """Buffers answers on the private protocol descriptor until ``flush``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _READ_SIZE:
            self.flush()

    def u64(self, value: int) -> None:
        self.write(_U64.pack(value))

    def string(self, text: str | bytes) -> None:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        self.write(_U64.pack(len(data)) + data + b"\0" * (-len(data) % 8))

    def strings(self, items: list[str]) -> None:
        self.u64(len(items))
        for item in items:
            self.string(item)

    def flush(self) -> None:
        view = memoryview(self._buffer)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        view.release()
        self._buffer.clear()

"""Framing for the socket between a client and its launcher process.

Each frame is a fixed header (kind, run id, payload length) and a payload:
JSON for specs and results, raw bytes for log chunks so logs are never
re-encoded on the hot path.
"""

import socket
import struct
from enum import IntEnum

from sandbox.errors import LauncherError

_HEADER = struct.Struct("!BQI")


class Kind(IntEnum):
    READY = 1
    RUN = 2
    CANCEL = 3
    LOG = 4
    RESULT = 5
    REJECTED = 6
    UIDS_EXHAUSTED = 7
    """A run refused for now: every build uid is held; the payload says which."""
    START_FAILED = 8
    """Sent instead of READY: the launcher cannot work; the payload says why."""


def pack(kind: Kind, run_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, run_id, len(payload)) + payload


class FrameReader:
    """Accumulates bytes from a stream socket and yields whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Kind, int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= _HEADER.size:
            kind, run_id, length = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((Kind(kind), run_id, bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return frames


def receive(sock: socket.socket, reader: FrameReader) -> list[tuple[Kind, int, bytes]]:
    """Block for at least one read; raise LauncherError when the peer is gone."""
    data = sock.recv(1 << 16)
    if not data:
        raise LauncherError("connection to the other side closed")
    return reader.feed(data)

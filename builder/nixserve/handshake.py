"""The serve protocol's opening exchange, shared by the program and the hand-off server.

Standard library and framing only: the program answers it before loading anything else.
"""

from __future__ import annotations

from builder.nixserve.wire import (
    SERVE_MAGIC_1,
    SERVE_MAGIC_2,
    SERVE_PROTOCOL_VERSION,
    ProtocolError,
    WireReader,
    WireWriter,
)

REQUIRED_MAJOR = 0x200
OLDEST_MINOR = 4


def handshake(reader: WireReader, writer: WireWriter) -> int:
    """Answer the client's magic with ours and return the client's protocol version."""
    magic = reader.u64("handshake magic")
    if magic != SERVE_MAGIC_1:
        raise ProtocolError(
            f"protocol mismatch: handshake magic {magic:#x}, expected {SERVE_MAGIC_1:#x}"
        )
    writer.u64(SERVE_MAGIC_2)
    writer.u64(SERVE_PROTOCOL_VERSION)
    writer.flush()
    version = reader.u64("client version")
    check_client_version(version)
    return version


def check_client_version(version: int) -> None:
    major, minor = version & 0xFF00, version & 0x00FF
    if major != REQUIRED_MAJOR or minor < OLDEST_MINOR:
        raise ProtocolError(
            f"unsupported client protocol version {major >> 8}.{minor} ({version:#x}); "
            f"this builder needs {REQUIRED_MAJOR >> 8}.{OLDEST_MINOR} or newer in the "
            f"{REQUIRED_MAJOR >> 8}.x series"
        )

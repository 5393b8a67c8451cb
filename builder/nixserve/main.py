"""The ``builder-nix-serve`` entry point: protect the protocol stream, answer the handshake.

Nix waits for the handshake answer of every connection it opens (one per
derivation it offloads), so this module imports nothing but the standard
library and the framing before answering; the store, the executor and gRPC
are loaded only afterwards, once the sandbox launcher of a data directory has
been spawned to start beside them. Before anything else, the protocol's
output moves to a private descriptor and descriptor 1 becomes a copy of
stderr: whatever a library or a child process prints then lands in the log
Nix shows, never in the protocol stream. Descriptor 0 likewise moves aside,
so no child can take bytes meant for us.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from builder.nixserve.options import parse_options
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
    major, minor = version & 0xFF00, version & 0x00FF
    if major != REQUIRED_MAJOR or minor < OLDEST_MINOR:
        raise ProtocolError(
            f"unsupported client protocol version {major >> 8}.{minor} ({version:#x}); "
            f"this builder needs {REQUIRED_MAJOR >> 8}.{OLDEST_MINOR} or newer in the "
            f"{REQUIRED_MAJOR >> 8}.x series"
        )
    return version


def _private_descriptors() -> tuple[int, int]:
    """The protocol's input and output descriptors, out of reach of everything else.

    ``os.dup`` makes non-inheritable copies, so children never hold them.
    """
    protocol_in = os.dup(0)
    protocol_out = os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return protocol_in, protocol_out


def main(argv: Sequence[str] | None = None) -> int:
    protocol_in, protocol_out = _private_descriptors()
    options = parse_options(sys.argv[1:] if argv is None else argv)
    reader, writer = WireReader(protocol_in), WireWriter(protocol_out)
    try:
        version = handshake(reader, writer)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    from builder.nixserve.launching import early_launcher

    launcher = early_launcher(options)
    from builder.nixserve.connection import serve_connection

    return serve_connection(reader, writer, options, version, protocol_in, launcher)

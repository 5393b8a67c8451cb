"""The ``builder-nix-serve`` entry point: protect the protocol stream, answer the handshake.

Nix waits for the handshake answer of every connection it opens (one per
derivation it offloads), so this module imports nothing but the standard
library and the framing before answering; a connection for a running
``builder serve`` (``handoff+unix://``) is then passed to it, and otherwise the
store, the executor and gRPC are loaded only afterwards, once the sandbox
launcher of a data directory has been spawned to start beside them. Before
anything else, the protocol's output moves to a private descriptor and
descriptor 1 becomes a copy of stderr: whatever a library or a child process
prints then lands in the log Nix shows, never in the protocol stream.
Descriptor 0 likewise moves aside, so no child can take bytes meant for us.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from builder.nixserve.handoff_relay import relay
from builder.nixserve.handshake import handshake
from builder.nixserve.options import parse_options
from builder.nixserve.wire import ProtocolError, WireReader, WireWriter
from builder.process_end import end_process

# Nothing before the handshake loads typing (see builder.process_end).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


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


def run() -> NoReturn:
    """The ``builder-nix-serve`` command: ``main``'s status is the process's exit status."""
    end_process(main())


def main(argv: Sequence[str] | None = None) -> int:
    protocol_in, protocol_out = _private_descriptors()
    options = parse_options(sys.argv[1:] if argv is None else argv)
    handoff_socket = options.handoff_socket
    if handoff_socket is not None and options.config is not None:
        print(
            "error: --config sets up a gRPC connection; a hand-off socket needs none",
            file=sys.stderr,
        )
        return 1
    reader, writer = WireReader(protocol_in), WireWriter(protocol_out)
    try:
        version = handshake(reader, writer)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    if handoff_socket is not None:
        return relay(handoff_socket, protocol_in, protocol_out, options.write, version)
    from builder.logging_setup import configure_logging

    # Nix shows stderr to its user as the build's log: warnings and errors only,
    # and gRPC's C core (imported below) silent.
    configure_logging("warning", "plain")
    from builder.nixserve.launching import early_launcher

    launcher = early_launcher(options)
    from builder.nixserve.connection import serve_connection

    return serve_connection(reader, writer, options, version, protocol_in, launcher)

"""A connection after the handshake: open the store, serve commands, report the outcome.

Errors end the connection the way ``nix-store --serve`` ends it: ``error:``
and the message on stderr, which Nix shows to its user, and exit status 1.
"""

from __future__ import annotations

import contextlib
import os
import sys

from builder.errors import BuilderError
from builder.nixserve.backend import open_backend
from builder.nixserve.building import ServeBuilds
from builder.nixserve.options import ServeOptions
from builder.nixserve.session import ServeSession
from builder.nixserve.wire import ProtocolError, WireReader, WireWriter
from sandbox.launcher import Launcher


def serve_connection(
    reader: WireReader,
    writer: WireWriter,
    options: ServeOptions,
    client_version: int,
    connection_fd: int,
    launcher: Launcher | None = None,
) -> int:
    """Serve until the client hangs up; ``launcher``, if spawned early, goes to the backend."""
    with contextlib.ExitStack() as unclaimed:
        if launcher is not None:
            unclaimed.callback(launcher.stop)
        try:
            backend = open_backend(options.store, options.config, launcher)
        except BuilderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        unclaimed.pop_all()
    try:
        builds = ServeBuilds(backend, connection_fd, os.environ)
        ServeSession(reader, writer, backend, client_version & 0xFF, builds, options.write).run()
        return 0
    except (ProtocolError, BuilderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        print("error: the client closed the connection", file=sys.stderr)
        return 1
    finally:
        backend.close()

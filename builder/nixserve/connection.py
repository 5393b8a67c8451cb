"""A connection after the handshake: serve commands, report the outcome.

Errors end the connection the way ``nix-store --serve`` ends it: ``error:``
and the message on the connection's log (stderr), which Nix shows to its
user, and exit status 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from builder.errors import BuilderError
from builder.nixserve.backend import ServeBackend, open_backend
from builder.nixserve.building import LOG_FD, ServeBuilds
from builder.nixserve.log_relay import write_within
from builder.nixserve.options import ServeOptions
from builder.nixserve.session import ServeSession
from builder.nixserve.wire import ProtocolError, WireReader, WireWriter
from sandbox.launcher import Launcher

REPORT_SECONDS = 10.0
"""How long an error report waits for a client that does not read its log."""


def report_error(log_fd: int, message: str) -> None:
    """``error: message`` on the log; a log nobody reads any more is no reason to fail.

    In a server the descriptor is a client's, so the write is bounded: a
    session ending must not wait on a client that never reads.
    """
    with contextlib.suppress(OSError):
        write_within(log_fd, f"error: {message}\n".encode(errors="replace"), REPORT_SECONDS)


def run_session(
    reader: WireReader,
    writer: WireWriter,
    backend: ServeBackend,
    client_version: int,
    connection_fd: int,
    log_fd: int,
    impure_env: Mapping[str, str],
    write: bool,
) -> int:
    """Serve one connection to its end; its exit status, errors reported on ``log_fd``."""
    try:
        builds = ServeBuilds(backend, connection_fd, impure_env, log_fd)
        ServeSession(reader, writer, backend, client_version & 0xFF, builds, write).run()
        return 0
    except (ProtocolError, BuilderError) as exc:
        report_error(log_fd, str(exc))
        return 1
    except ConnectionError:
        # A closed pipe, or a socket the client reset with data unread.
        report_error(log_fd, "the client closed the connection")
        return 1


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
            config = Path(options.config) if options.config is not None else None
            backend = open_backend(options.store, config, launcher)
        except BuilderError as exc:
            report_error(LOG_FD, str(exc))
            return 1
        unclaimed.pop_all()
    try:
        return run_session(
            reader, writer, backend, client_version, connection_fd, LOG_FD, os.environ,
            options.write,
        )  # fmt: skip
    finally:
        backend.close()

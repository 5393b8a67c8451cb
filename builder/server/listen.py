"""Listen addresses: the URLs an operator writes, bound on a grpc server.

The address forms are the ones clients use (``builder.castore.grpc.endpoint``),
so the URL a server was started with can be handed unchanged to a client.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc

from builder.castore.grpc.endpoint import Endpoint, parse_endpoint
from builder.errors import FailedPreconditionError, UnavailableError


def remove_stale_socket(path: str) -> None:
    """Remove a socket left by a previous run; refuse to delete anything else.

    gRPC cannot bind over an existing file, and a server killed without
    cleanup always leaves its socket behind.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FailedPreconditionError(f"{path} exists and is not a socket")
    os.unlink(path)


def bind(server: grpc.Server, url: str, credentials: grpc.ServerCredentials | None = None) -> str:
    """Bind one address and return it with the port actually chosen (for port 0).

    With ``credentials``, TCP addresses are served over TLS; unix sockets stay
    plain, their file permissions being what guards them.
    """
    endpoint: Endpoint = parse_endpoint(url)
    if endpoint.unix_path is not None:
        Path(endpoint.unix_path).parent.mkdir(parents=True, exist_ok=True)
        remove_stale_socket(endpoint.unix_path)
    try:
        if credentials is not None and endpoint.unix_path is None:
            port = server.add_secure_port(endpoint.target, credentials)
        else:
            port = server.add_insecure_port(endpoint.target)
    except RuntimeError as exc:
        # gRPC's message only says to raise its verbosity, which --log-level debug does.
        raise UnavailableError(
            f"cannot listen on {url}: the address is in use or cannot be bound "
            "(--log-level debug shows gRPC's reason)"
        ) from exc
    if port == 0 and endpoint.unix_path is None:
        raise UnavailableError(f"cannot listen on {url}")
    if endpoint.unix_path is not None:
        return url
    host = endpoint.target.rsplit(":", 1)[0]
    return f"grpc+http://{host}:{port}"


def bind_all(
    server: grpc.Server, urls: list[str], credentials: grpc.ServerCredentials | None = None
) -> list[str]:
    return [bind(server, url, credentials) for url in urls]

"""What a failed call to the remote server is reported as."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from builder.castore.grpc.status import error_from_rpc, status_code_of
from builder.errors import BuilderError


def remote_error(error: grpc.RpcError, address: str) -> BuilderError:
    """The product error for a failed call, naming the server and the status code.

    The code is part of the message because several codes (UNAUTHENTICATED,
    PERMISSION_DENIED, INTERNAL) have no product error of their own, and a
    user who sees only "missing or wrong bearer token" should still learn
    that the server refused the call rather than the client.
    """
    translated = error_from_rpc(error)
    code = status_code_of(error)
    if code in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
        # No status to name: the message says so itself.
        return type(translated)(f"{address}: {translated}")
    return type(translated)(f"{address}: {code.name}: {translated}")


@contextmanager
def naming_server(address: str) -> Iterator[None]:
    """Report a failed call of the castore clients the way ``remote_error`` does.

    Those clients raise product errors caused by the call's ``RpcError``; the
    server and status code are added from that cause.
    """
    try:
        yield
    except BuilderError as exc:
        if isinstance(exc.__cause__, grpc.RpcError):
            raise remote_error(exc.__cause__, address) from exc.__cause__
        raise

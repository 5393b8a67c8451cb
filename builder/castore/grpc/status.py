"""The one table between product errors and gRPC status codes, in both directions.

Servers answer with the code of the error raised (``builder.server.status``);
clients raise the error a code stands for. The client direction is derived
from the server's table so the two cannot drift apart.
"""

from __future__ import annotations

import re

import grpc

from builder.errors import (
    BuilderError,
    BuildFailedError,
    CancelledError,
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)

# Order matters only if the error classes ever form a hierarchy: the first
# matching entry wins.
STATUS_OF_ERROR: tuple[tuple[type[BuilderError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    # Every way a build can fail (exit code, signal, missing output, limit)
    # is ABORTED, where Snix answers INTERNAL: a client then tells a failed
    # build from a server bug, which alone is INTERNAL (``builder.server.status``).
    (BuildFailedError, grpc.StatusCode.ABORTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (IntegrityError, grpc.StatusCode.DATA_LOSS),
)

# Only a client sees its own deadline run out: the server did not answer in time.
_CLIENT_SIDE: dict[grpc.StatusCode, type[BuilderError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}

ERROR_OF_CODE: dict[grpc.StatusCode, type[BuilderError]] = {
    **{code: cls for cls, code in reversed(STATUS_OF_ERROR)},
    **_CLIENT_SIDE,
}


# How gRPC's C core words a channel that could not connect: the last address
# tried, then a chain of its own error names before the system's reason.
_CONNECT_FAILED = re.compile(
    # The first wording is pick_first's, the second round_robin's (see channel.py).
    r"(?:failed to connect to all addresses|connections to all backends failing); "
    r"last error: [A-Z_]+: "
    r"(?P<address>.+?): (?:.*error: )?(?P<reason>[^:]+)"
)
# How it words a build channel whose servers all answer NOT_SERVING on health.
_NONE_HEALTHY = re.compile(
    r"connections to all backends failing; last error: (?P<address>.+?): backend unhealthy"
)


def status_code_of(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN


def error_from_rpc(error: grpc.RpcError) -> BuilderError:
    """The product error a failed call stands for, keeping the server's message.

    Codes without a counterpart become the base ``BuilderError``. The message
    is meant for a user: never the error's ``str()``, which carries gRPC's
    debug string, and never a bare status name (a call can fail with OK
    when it broke before any status arrived).
    """
    code = status_code_of(error)
    details = error.details() if isinstance(error, grpc.Call) else None
    cls = ERROR_OF_CODE.get(code, BuilderError)
    return cls(readable_details(details) if details else _without_details(code))


def readable_details(details: str) -> str:
    """The server's message, with gRPC's own wording of a failed connection made short."""
    unhealthy = _NONE_HEALTHY.fullmatch(details)
    if unhealthy is not None:
        return (
            f"no server is serving builds; {unhealthy['address']}, the last tried, "
            "is draining or unhealthy"
        )
    failed = _CONNECT_FAILED.fullmatch(details)
    if failed is None:
        return details
    return f"cannot connect to {failed['address']}: {failed['reason'].strip()}"


def _without_details(code: grpc.StatusCode) -> str:
    if code in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
        return "the call ended without a status from the server"
    return f"the server answered {code.name} without saying why"

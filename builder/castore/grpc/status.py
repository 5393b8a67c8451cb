"""The one table between product errors and gRPC status codes, in both directions.

Servers answer with the code of the error raised (``builder.server.status``);
clients raise the error a code stands for. The client direction is derived
from the server's table so the two cannot drift apart.
"""

from __future__ import annotations

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


def status_code_of(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN


def error_from_rpc(error: grpc.RpcError) -> BuilderError:
    """The product error a failed call stands for, keeping the server's message.

    Codes without a counterpart become the base ``BuilderError``.
    """
    code = status_code_of(error)
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    cls = ERROR_OF_CODE.get(code, BuilderError)
    return cls(details or f"remote call failed with {code.name}")

"""What every gRPC endpoint of the castore shares: addresses, channels, stubs, errors.

Clients in this package and the servers in ``builder.server`` both use it, so an
address means the same thing on either side and both families resolve to their
generated modules in one place. The status-to-exception direction lives here
rather than in ``builder.server.status`` because the castore layer must not
depend on the server layer; the two tables are kept inverse by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from urllib.parse import urlsplit

import grpc

from builder.castore.wire import Family
from builder.errors import (
    BuilderError,
    CancelledError,
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from builder.proto.snix.castore.protos import rpc_blobstore_pb2 as snix_blobstore
from builder.proto.snix.castore.protos import rpc_blobstore_pb2_grpc as snix_blobstore_grpc
from builder.proto.snix.castore.protos import rpc_directory_pb2 as snix_directory
from builder.proto.snix.castore.protos import rpc_directory_pb2_grpc as snix_directory_grpc
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2 as tvix_blobstore
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2_grpc as tvix_blobstore_grpc
from builder.proto.tvix.castore.protos import rpc_directory_pb2 as tvix_directory
from builder.proto.tvix.castore.protos import rpc_directory_pb2_grpc as tvix_directory_grpc

# Blob data travels in 1 MiB messages; Directory messages of very wide trees
# are the only large ones, so both limits are raised well above gRPC's 4 MiB
# default without making a single message unbounded.
MAX_MESSAGE_SIZE = 64 << 20

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
]

UNIX_SCHEME = "grpc+unix"
HTTP_SCHEME = "grpc+http"


@dataclass(frozen=True)
class CastoreRpc:
    """The generated modules of one family's castore services."""

    blobstore: ModuleType
    blobstore_grpc: ModuleType
    directory: ModuleType
    directory_grpc: ModuleType


_RPC = {
    Family.TVIX: CastoreRpc(
        tvix_blobstore, tvix_blobstore_grpc, tvix_directory, tvix_directory_grpc
    ),
    Family.SNIX: CastoreRpc(
        snix_blobstore, snix_blobstore_grpc, snix_directory, snix_directory_grpc
    ),
}


def castore_rpc(family: Family) -> CastoreRpc:
    return _RPC[family]


@dataclass(frozen=True)
class Endpoint:
    """A parsed address; ``target`` is the form gRPC's own APIs accept."""

    url: str
    target: str
    unix_path: str | None = None


def parse_endpoint(url: str) -> Endpoint:
    """Accept ``grpc+unix:///abs/path.sock`` and ``grpc+http://host:port``."""
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise InvalidArgumentError(
                f"{url!r}: expected grpc+unix:///absolute/path.sock"
            )
        return Endpoint(url, f"unix:{parts.path}", parts.path)
    if parts.scheme == HTTP_SCHEME:
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidArgumentError(f"{url!r}: expected grpc+http://host:port")
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidArgumentError(f"{url!r}: {exc}") from exc
        if port is None or not parts.hostname:
            raise InvalidArgumentError(f"{url!r}: host and port are required")
        host = parts.hostname
        return Endpoint(url, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    raise InvalidArgumentError(
        f"{url!r}: unsupported scheme {parts.scheme!r}, expected {UNIX_SCHEME} or {HTTP_SCHEME}"
    )


def open_channel(url: str) -> grpc.Channel:
    return grpc.insecure_channel(parse_endpoint(url).target, options=CHANNEL_OPTIONS)


ERROR_OF_CODE: dict[grpc.StatusCode, type[BuilderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
    grpc.StatusCode.DATA_LOSS: IntegrityError,
}


def error_from_rpc(error: grpc.RpcError) -> BuilderError:
    """The product error a failed call stands for, keeping the server's message.

    INTERNAL and codes without a counterpart become the base ``BuilderError``:
    a client cannot tell a failed build from any other server-side failure.
    """
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    cls = ERROR_OF_CODE.get(code, BuilderError)
    return cls(details or f"remote call failed with {code.name}")


def status_code_of(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN

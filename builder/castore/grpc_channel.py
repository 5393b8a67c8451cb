"""What every gRPC endpoint of the castore shares: addresses, channels, stubs, errors.

Clients in this package and the servers in ``builder.server`` both use it, so an
address means the same thing on either side and both families resolve to their
generated modules in one place. The status-to-exception direction lives here
rather than in ``builder.server.status`` because the castore layer must not
depend on the server layer; the two tables are kept inverse by a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple
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
HTTPS_SCHEME = "grpc+https"


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
    tls: bool = False


def parse_endpoint(url: str) -> Endpoint:
    """Accept ``grpc+unix:///abs/path.sock`` and ``grpc+http://host:port``."""
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise InvalidArgumentError(f"{url!r}: expected grpc+unix:///absolute/path.sock")
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


def parse_client_endpoint(url: str) -> Endpoint:
    """``parse_endpoint`` plus ``grpc+https://host:port``, which only a client can dial.

    Servers keep to ``parse_endpoint``: whether a listener speaks TLS is
    decided by the certificate it is given, not by the URL.
    """
    parts = urlsplit(url)
    if parts.scheme != HTTPS_SCHEME:
        return parse_endpoint(url)
    plain = parse_endpoint(parts._replace(scheme=HTTP_SCHEME).geturl())
    return Endpoint(url, plain.target, tls=True)


@dataclass(frozen=True)
class ChannelSecurity:
    """What a client presents beyond the address.

    ``root_certificates`` are the CAs a ``grpc+https`` server is checked
    against (None: the system's); ``client_key`` and ``client_cert`` (PEM)
    answer a server that requires client certificates; ``token`` is sent as
    ``authorization: Bearer <token>`` on every call, over any transport, so
    over ``grpc+http`` it travels in the clear.
    """

    root_certificates: bytes | None = None
    client_key: bytes | None = None
    client_cert: bytes | None = None
    token: str | None = None


def open_channel(url: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    endpoint = parse_client_endpoint(url)
    security = security or ChannelSecurity()
    if endpoint.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=security.root_certificates,
            private_key=security.client_key,
            certificate_chain=security.client_cert,
        )
        channel = grpc.secure_channel(endpoint.target, credentials, options=CHANNEL_OPTIONS)
    elif security.root_certificates or security.client_key or security.client_cert:
        raise InvalidArgumentError(f"{url!r}: TLS settings need a {HTTPS_SCHEME}:// address")
    else:
        channel = grpc.insecure_channel(endpoint.target, options=CHANNEL_OPTIONS)
    if security.token:
        # An interceptor rather than call credentials: gRPC refuses those on
        # plaintext channels, and a unix socket to a token-protected server is one.
        channel = grpc.intercept_channel(channel, _BearerToken(security.token))
    return channel


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _ClientCallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


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

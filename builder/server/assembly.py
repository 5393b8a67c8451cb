"""The one place a gRPC server is put together, for the whole product or the castore alone.

Every server gets the same steps in the same order: a thread pool, the token
check before request decoding, the caller's services, health and reflection
naming them all, and its listen addresses bound with or without TLS. Callers
only say which services to add.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from builder.castore.grpc.channel import CHANNEL_OPTIONS
from builder.castore.grpc.endpoint import UNIX_SCHEME
from builder.server.auth import BearerTokenInterceptor
from builder.server.call_counting import CallCountingInterceptor, CallEnded
from builder.server.decoding import RequestDecodingInterceptor
from builder.server.listen import bind_all

logger = logging.getLogger(__name__)

# Every streaming call holds a worker thread for its whole duration, so this
# bounds concurrent uploads and downloads, not just request rate.
DEFAULT_MAX_WORKERS = 32

# gRPC sets SO_REUSEPORT by default, which lets a second server bind a port
# already in use and silently share its traffic; a busy port must be an error.
SERVER_OPTIONS: list[tuple[str, int]] = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]

# Registers services on a server and returns their full names for health and reflection.
AddServices = Callable[[grpc.Server], list[str]]


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


class BoundServer(NamedTuple):
    """A bound, not yet started server; ``addresses`` carry the ports actually chosen."""

    server: grpc.Server
    addresses: list[str]
    health: health.HealthServicer


def assemble_server(
    add_services: Sequence[AddServices],
    listen: list[str],
    max_workers: int = DEFAULT_MAX_WORKERS,
    tls: TlsConfig | None = None,
    token: str | None = None,
    call_ended: CallEnded | None = None,
) -> BoundServer:
    """A bound server offering every service ``add_services`` register.

    Requests are decoded inside each call, after the token check, so a call
    without the token is refused before its request is even parsed. With
    ``call_ended``, every call is reported when it ends, calls refused for
    their token included, since the counting comes first.
    """
    interceptors: list[grpc.ServerInterceptor] = [BearerTokenInterceptor(token)] if token else []
    if call_ended is not None:
        interceptors.insert(0, CallCountingInterceptor(call_ended))
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
        options=SERVER_OPTIONS,
        interceptors=[*interceptors, RequestDecodingInterceptor()],
    )
    names = [name for add in add_services for name in add(server)]
    checker = _add_health_and_reflection(server, names)
    addresses = bind_all(server, listen, tls.credentials() if tls else None)
    if token and tls is None:
        for address in addresses:
            if not address.startswith(UNIX_SCHEME):
                logger.warning(
                    "%s has no TLS: the bearer token travels in clear text to anyone "
                    "on the path (add --tls-cert and --tls-key)",
                    address,
                )
    return BoundServer(server, addresses, checker)


def _add_health_and_reflection(
    server: grpc.Server, service_names: list[str]
) -> health.HealthServicer:
    """Report every named service (and the server as a whole, "") as serving."""
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for name in ["", *service_names]:
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        [*service_names, health_name, reflection.SERVICE_NAME], server
    )
    return checker

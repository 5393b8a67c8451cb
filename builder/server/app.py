"""The whole product on one port: castore and build services of both families,
the streaming extension, health and reflection, optional TLS and token auth."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from builder.build.service import BuildService
from builder.castore.grpc.endpoint import UNIX_SCHEME
from builder.castore.store import Store
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES
from builder.server.auth import BearerTokenInterceptor
from builder.server.build_servicers import add_build_services
from builder.server.castore_server import (
    DEFAULT_MAX_WORKERS,
    BoundServer,
    add_castore_services,
    add_health_and_reflection,
    new_grpc_server,
    run_until_signalled,
)
from builder.server.listen import bind_all

logger = logging.getLogger(__name__)


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


def create_server(
    store: Store,
    builds: BuildService,
    listen: list[str],
    tls: TlsConfig | None = None,
    token: str | None = None,
    reserve_workers: int = DEFAULT_MAX_WORKERS,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
) -> BoundServer:
    """Assemble the server with one thread per admitted build and log follower, plus
    ``reserve_workers``.

    A build RPC holds its thread until the build ends, queued or running, and
    a GetLog call until the build it follows ends; callers past either bound
    are refused on arrival. Sizing the pool this way leaves the reserve to
    health, castore and other calls under any build load, instead of letting
    them wait behind builds.
    """
    server = new_grpc_server(
        builds.capacity + builds.config.log_followers + reserve_workers,
        [BearerTokenInterceptor(token)] if token else None,
    )
    names = add_castore_services(server, store.blobs, store.directories, max_directory_entries)
    names += add_build_services(server, builds)
    checker = add_health_and_reflection(server, names)
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


def serve(
    store: Store,
    builds: BuildService,
    listen: list[str],
    tls: TlsConfig | None = None,
    token: str | None = None,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
) -> None:
    bound = create_server(
        store, builds, listen, tls, token, max_directory_entries=max_directory_entries
    )
    logger.info("listening on %s", ", ".join(bound.addresses))
    run_until_signalled(bound.server, bound.health)

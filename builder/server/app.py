"""The whole product on one port: castore and build services of both families,
the streaming extension, health and reflection, optional TLS and token auth."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from builder.build.service import BuildService
from builder.castore.store import Store
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES
from builder.server.auth import BearerTokenInterceptor
from builder.server.build_servicers import add_build_services
from builder.server.castore_server import (
    DEFAULT_MAX_WORKERS,
    SERVER_OPTIONS,
    BoundServer,
    add_castore_services,
    add_health_and_reflection,
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
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
) -> BoundServer:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
        options=SERVER_OPTIONS,
        interceptors=[BearerTokenInterceptor(token)] if token else None,
    )
    names = add_castore_services(server, store.blobs, store.directories, max_directory_entries)
    names += add_build_services(server, builds)
    checker = add_health_and_reflection(server, names)
    addresses = bind_all(server, listen, tls.credentials() if tls else None)
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

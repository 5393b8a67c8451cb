"""The whole product on one port: castore, PathInfo and build services of both
families, the streaming extension, the result cache, health and reflection,
optional TLS and token auth."""

from __future__ import annotations

import logging
import os
import socket
from functools import partial

from builder.castore.hit_counts import NearCacheCounted
from builder.castore.objectstore_url import address_for_logs
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES
from builder.executor.draining import DEFAULT_SHUTDOWN_GRACE
from builder.executor.service import BuildService
from builder.server.assembly import DEFAULT_MAX_WORKERS, BoundServer, TlsConfig, assemble_server
from builder.server.build_servicers import add_build_services
from builder.server.castore_server import add_castore_services
from builder.server.metrics import MetricsAddress, MetricsServer, ServerMetrics
from builder.server.pathinfo_servicers import add_pathinfo_services
from builder.server.result_cache_servicer import add_result_cache_service
from builder.server.running import run_until_signalled
from builder.store.store import Store

logger = logging.getLogger(__name__)


def default_node_name() -> str:
    """``HOSTNAME:PID``: tells apart builders of one host as well as hosts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def create_server(
    store: Store,
    builds: BuildService,
    listen: list[str],
    tls: TlsConfig | None = None,
    token: str | None = None,
    reserve_workers: int = DEFAULT_MAX_WORKERS,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
    metrics: ServerMetrics | None = None,
    node_name: str | None = None,
) -> BoundServer:
    """Assemble the server with one thread per admitted build and log follower, plus
    ``reserve_workers``.

    A build RPC holds its thread until the build ends, queued or running, and
    a GetLog call until the build it follows ends; callers past either bound
    are refused on arrival. Sizing the pool this way leaves the reserve to
    health, castore and other calls under any build load, instead of letting
    them wait behind builds. With ``metrics``, the server's calls and blob
    traffic are counted into them. Build calls name ``node_name`` (default:
    ``default_node_name()``) to their clients.
    """
    castore = partial(
        add_castore_services,
        blobs=store.blobs,
        directories=store.directories,
        max_directory_entries=max_directory_entries,
        traffic=metrics.traffic if metrics else None,
    )
    pathinfos = partial(
        add_pathinfo_services,
        pathinfos=store.pathinfos,
        blobs=store.blobs,
        directories=store.directories,
    )
    return assemble_server(
        [
            castore,
            pathinfos,
            partial(add_result_cache_service, results=store.results),
            partial(add_build_services, service=builds, node_name=node_name or default_node_name()),
        ],
        listen,
        builds.capacity + builds.config.log_followers + reserve_workers,
        tls,
        token,
        metrics.call_ended if metrics else None,
    )


def serve(
    store: Store,
    builds: BuildService,
    listen: list[str],
    tls: TlsConfig | None = None,
    token: str | None = None,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    metrics_address: MetricsAddress | None = None,
    store_url: str = "",
    node_name: str | None = None,
) -> None:
    """Serve until signalled; with ``metrics_address``, Prometheus metrics there too.

    ``store_url`` is how the start line names the store.
    """
    near_caches = {
        name: service.near_counts
        for name, service in (("blobs", store.blobs), ("directories", store.directories))
        if isinstance(service, NearCacheCounted)
    }
    metrics = ServerMetrics(builds, near_caches) if metrics_address else None
    node_name = node_name or default_node_name()
    bound = create_server(
        store,
        builds,
        listen,
        tls,
        token,
        max_directory_entries=max_directory_entries,
        metrics=metrics,
        node_name=node_name,
    )
    exporter = MetricsServer(metrics, metrics_address) if metrics and metrics_address else None
    logger.info(
        "listening on %s",
        ", ".join(bound.addresses),
        extra={
            "listen": bound.addresses,
            "store": address_for_logs(store_url),
            "jobs": builds.job_slots,
            "queue": builds.config.queue_length,
            "tls": tls is not None,
            "token": token is not None,
            "node": node_name,
        },
    )
    try:
        run_until_signalled(bound.server, bound.health, shutdown_grace, builds)
    finally:
        if exporter is not None:
            exporter.stop()

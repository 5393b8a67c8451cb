"""Assembly of a gRPC server exposing the castore in both families.

The steps are separate functions so that the build service can be added to
the same server by whoever assembles the whole product: create the server,
add every service, add health and reflection naming them all, bind, start.
``create_castore_server`` and ``serve_castore`` are that sequence for a
castore-only server.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.grpc.channel import CHANNEL_OPTIONS
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES, Family
from builder.server.castore_servicers import BlobServicer, DirectoryServicer
from builder.server.decoding import RequestDecodingInterceptor
from builder.server.listen import bind_all

logger = logging.getLogger(__name__)

# Every streaming call holds a worker thread for its whole duration, so this
# bounds concurrent uploads and downloads, not just request rate.
DEFAULT_MAX_WORKERS = 32
DEFAULT_GRACE_SECONDS = 10.0


# gRPC sets SO_REUSEPORT by default, which lets a second server bind a port
# already in use and silently share its traffic; a busy port must be an error.
SERVER_OPTIONS: list[tuple[str, int]] = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]


def new_grpc_server(
    max_workers: int = DEFAULT_MAX_WORKERS,
    interceptors: list[grpc.ServerInterceptor] | None = None,
) -> grpc.Server:
    """A server whose requests are decoded inside each call, after ``interceptors`` ran."""
    return grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
        options=SERVER_OPTIONS,
        interceptors=[*(interceptors or []), RequestDecodingInterceptor()],
    )


def add_castore_services(
    server: grpc.Server,
    blobs: BlobService,
    directories: DirectoryService,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
) -> list[str]:
    """Register Blob and Directory services of both families; return their full names."""
    names: list[str] = []
    for family in Family:
        names.append(BlobServicer(blobs, family).register(server))
        servicer = DirectoryServicer(directories, family, max_directory_entries)
        names.append(servicer.register(server))
    return names


def add_health_and_reflection(
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


class BoundServer(NamedTuple):
    """A bound, not yet started server; ``addresses`` carry the ports actually chosen."""

    server: grpc.Server
    addresses: list[str]
    health: health.HealthServicer


def create_castore_server(
    blobs: BlobService,
    directories: DirectoryService,
    listen: list[str],
    max_workers: int = DEFAULT_MAX_WORKERS,
) -> BoundServer:
    server = new_grpc_server(max_workers)
    checker = add_health_and_reflection(server, add_castore_services(server, blobs, directories))
    return BoundServer(server, bind_all(server, listen), checker)


def run_until_signalled(
    server: grpc.Server,
    checker: health.HealthServicer | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> None:
    """Start the server and stop it gracefully on SIGTERM or SIGINT.

    Health turns NOT_SERVING first so that load balancers stop sending new
    calls while running ones get ``grace`` seconds to finish.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        stop.wait()
        logger.info("stopping, %.1f s grace for running calls", grace)
        if checker is not None:
            checker.enter_graceful_shutdown()
        server.stop(grace).wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_castore(
    blobs: BlobService,
    directories: DirectoryService,
    listen: list[str],
    max_workers: int = DEFAULT_MAX_WORKERS,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> None:
    bound = create_castore_server(blobs, directories, listen, max_workers)
    logger.info("castore listening on %s", ", ".join(bound.addresses))
    run_until_signalled(bound.server, bound.health, grace)

"""A server exposing the castore in both families, alone or as part of the whole product.

Given a PathInfo service too, it serves the store's PathInfoService beside
the castore it checks records against, and given a result cache, that too, so
that builders pointed at this server share results.
"""

from __future__ import annotations

import logging
from functools import partial

import grpc

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES, Family
from builder.executor.draining import DEFAULT_SHUTDOWN_GRACE
from builder.server.assembly import DEFAULT_MAX_WORKERS, BoundServer, assemble_server
from builder.server.blob_traffic import BlobTraffic
from builder.server.castore_servicers import (
    CANCEL_GRACE,
    BlobBatchesServicer,
    BlobServicer,
    DirectoryServicer,
)
from builder.server.pathinfo_servicers import add_pathinfo_services
from builder.server.result_cache_servicer import add_result_cache_service
from builder.server.running import run_until_signalled
from builder.store.results.service import ResultCache
from builder.store.service import PathInfoService

logger = logging.getLogger(__name__)


def add_castore_services(
    server: grpc.Server,
    blobs: BlobService,
    directories: DirectoryService,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
    extensions: bool = True,
    cancel_grace: float = CANCEL_GRACE,
    traffic: BlobTraffic | None = None,
) -> list[str]:
    """Register Blob and Directory services of both families; return their full names.

    Without ``extensions`` the server offers only what a Tvix or Snix castore
    server does (no batched blob calls, no directory end marker), which is how
    clients' fallback is exercised. Blob calls of every kind count into
    ``traffic``, when given.
    """
    traffic = traffic or BlobTraffic()
    names: list[str] = []
    for family in Family:
        names.append(BlobServicer(blobs, family, cancel_grace, traffic).register(server))
        servicer = DirectoryServicer(
            directories, family, max_directory_entries, extensions, cancel_grace
        )
        names.append(servicer.register(server))
    if extensions:
        names.append(BlobBatchesServicer(blobs, traffic).register(server))
    return names


def create_castore_server(
    blobs: BlobService,
    directories: DirectoryService,
    listen: list[str],
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_directory_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
    pathinfos: PathInfoService | None = None,
    extensions: bool = True,
    cancel_grace: float = CANCEL_GRACE,
    results: ResultCache | None = None,
) -> BoundServer:
    add = [
        partial(
            add_castore_services,
            blobs=blobs,
            directories=directories,
            max_directory_entries=max_directory_entries,
            extensions=extensions,
            cancel_grace=cancel_grace,
        )
    ]
    if pathinfos is not None:
        add.append(
            partial(
                add_pathinfo_services, pathinfos=pathinfos, blobs=blobs, directories=directories
            )
        )
    if results is not None:
        add.append(partial(add_result_cache_service, results=results))
    return assemble_server(add, listen, max_workers)


def serve_castore(
    blobs: BlobService,
    directories: DirectoryService,
    listen: list[str],
    max_workers: int = DEFAULT_MAX_WORKERS,
    grace: float = DEFAULT_SHUTDOWN_GRACE,
    pathinfos: PathInfoService | None = None,
    results: ResultCache | None = None,
) -> None:
    bound = create_castore_server(
        blobs, directories, listen, max_workers, pathinfos=pathinfos, results=results
    )
    logger.info(
        "castore listening on %s", ", ".join(bound.addresses), extra={"listen": bound.addresses}
    )
    run_until_signalled(bound.server, bound.health, grace)

"""PathInfoService servicers, written once for both families.

Each call converts messages and delegates: lookups to the PathInfo service,
puts and NAR calculation to ``builder.store.path_contents``, which checks a
record's contents against the castore this server serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.wire import Family, node_from_proto
from builder.errors import InvalidArgumentError, NotFoundError
from builder.server.status import rpc_errors
from builder.store.path_contents import calculate_nar, put_checked
from builder.store.service import PathInfoService
from builder.store.store_path import check_digest
from builder.store.stubs import store_rpc
from builder.store.wire import path_info_from_proto, path_info_to_proto


class PathInfoServicer:
    def __init__(
        self,
        pathinfos: PathInfoService,
        blobs: BlobService,
        directories: DirectoryService,
        family: Family,
    ) -> None:
        self._pathinfos = pathinfos
        self._blobs = blobs
        self._directories = directories
        self._family = family
        self._messages = store_rpc(family).rpc

    def register(self, server: grpc.Server) -> str:
        rpc = store_rpc(self._family)
        rpc.rpc_grpc.add_PathInfoServiceServicer_to_server(self, server)
        return rpc.rpc.DESCRIPTOR.services_by_name["PathInfoService"].full_name

    @rpc_errors
    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.WhichOneof("by_what") != "by_output_hash":
            raise InvalidArgumentError("by_what: no lookup key set")
        digest = check_digest(request.by_output_hash, "by_output_hash")
        info = self._pathinfos.get(digest)
        if info is None:
            raise NotFoundError(f"no path info for digest {digest.hex()}")
        return path_info_to_proto(info, self._family)

    @rpc_errors
    def Put(self, request: Any, context: grpc.ServicerContext) -> Any:
        info = path_info_from_proto(request)
        stored = put_checked(self._pathinfos, self._blobs, self._directories, info)
        return path_info_to_proto(stored, self._family)

    @rpc_errors
    def CalculateNAR(self, request: Any, context: grpc.ServicerContext) -> Any:
        sha256, size = calculate_nar(node_from_proto(request), self._blobs, self._directories)
        return self._messages.CalculateNARResponse(nar_size=size, nar_sha256=sha256)

    @rpc_errors
    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for info in self._pathinfos.list():
            yield path_info_to_proto(info, self._family)


def add_pathinfo_services(
    server: grpc.Server,
    pathinfos: PathInfoService,
    blobs: BlobService,
    directories: DirectoryService,
) -> list[str]:
    """Register the PathInfoService of both families; return their full names."""
    return [
        PathInfoServicer(pathinfos, blobs, directories, family).register(server)
        for family in Family
    ]

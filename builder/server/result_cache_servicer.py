"""The ``builder.v1.ResultCache`` servicer: the store's result cache, offered to other builders.

Each call checks the key and result and delegates to the store's result cache,
whose backend validates what it stores.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from builder.castore.collection import UsedRoot
from builder.castore.wire import Family, node_to_proto
from builder.errors import NotFoundError
from builder.proto.builder.v1 import result_cache_pb2, result_cache_pb2_grpc
from builder.proto.tvix.build.protos import build_pb2
from builder.server.status import rpc_errors
from builder.store.results.service import ResultCache, check_key


class ResultCacheServicer(result_cache_pb2_grpc.ResultCacheServicer):
    def __init__(self, results: ResultCache) -> None:
        self._results = results

    @rpc_errors
    def Get(
        self, request: result_cache_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> build_pb2.Build:
        build = self._results.get(check_key(request.key))
        if build is None:
            raise NotFoundError(f"key: no result recorded for {request.key.hex()}")
        return build

    @rpc_errors
    def Put(
        self, request: result_cache_pb2.PutResultRequest, context: grpc.ServicerContext
    ) -> result_cache_pb2.PutResultResponse:
        self._results.put(check_key(request.key), request.build)
        return result_cache_pb2.PutResultResponse()

    @rpc_errors
    def List(
        self, request: result_cache_pb2.ListResultsRequest, context: grpc.ServicerContext
    ) -> Iterator[result_cache_pb2.ResultEntry]:
        for root in self._results.used_roots():
            yield result_cache_pb2.ResultEntry(
                key=root.key,
                outputs=[node_to_proto(node, Family.TVIX) for node in root.nodes],
                last_used=root.last_used,
            )

    @rpc_errors
    def Evict(
        self, request: result_cache_pb2.EvictResultRequest, context: grpc.ServicerContext
    ) -> result_cache_pb2.EvictResultResponse:
        root = UsedRoot(check_key(request.key), (), request.last_used)
        return result_cache_pb2.EvictResultResponse(evicted=self._results.evict(root))


def add_result_cache_service(server: grpc.Server, results: ResultCache) -> list[str]:
    """Register the result cache service; return its full name."""
    result_cache_pb2_grpc.add_ResultCacheServicer_to_server(ResultCacheServicer(results), server)
    return [result_cache_pb2.DESCRIPTOR.services_by_name["ResultCache"].full_name]

"""A result cache on a remote builder or castore server, over ``builder.v1.ResultCache``.

What comes back is checked as a stored result would be (sizes, node digests,
one needle list per output), since a remote peer is no more trusted than a
shared bucket.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from builder.castore.collection import UsedRoot
from builder.castore.composition import Backend, Params
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.security import ChannelSecurity
from builder.castore.grpc.status import error_from_rpc, status_code_of
from builder.castore.grpc.store_params import (
    GRPC_SCHEMES,
    family_param,
    grpc_url_params,
    security_params,
)
from builder.castore.wire import node_from_proto
from builder.errors import IntegrityError, InvalidArgumentError
from builder.proto.builder.v1 import result_cache_pb2, result_cache_pb2_grpc
from builder.proto.tvix.build.protos import build_pb2
from builder.store.results.service import (
    KEY_SIZE,
    MAX_RESULT_BYTES,
    check_key,
    decode_result,
    encode_result,
)


def _received(build: build_pb2.Build, what: str) -> build_pb2.Build:
    return decode_result(build.SerializeToString(), f"server's result for {what}")


def _listed(entry: result_cache_pb2.ResultEntry) -> UsedRoot:
    """A listed entry, as checked as a stored result: the listing is as bounded as a get."""
    if len(entry.key) != KEY_SIZE or entry.ByteSize() > MAX_RESULT_BYTES:
        raise IntegrityError(
            f"server listed a result with a {len(entry.key)}-byte key in {entry.ByteSize()} bytes"
        )
    where = f"server's listed result {entry.key.hex()}"
    try:
        nodes = tuple(
            node_from_proto(node, f"{where}.outputs[{index}]")
            for index, node in enumerate(entry.outputs)
        )
    except InvalidArgumentError as error:
        raise IntegrityError(str(error)) from error
    return UsedRoot(entry.key, nodes, entry.last_used)


class GrpcResultCache:
    def __init__(self, url: str, security: ChannelSecurity | None = None) -> None:
        self.url = url
        self._channel = open_channel(url, security)
        self._stub = result_cache_pb2_grpc.ResultCacheStub(self._channel)

    def get(self, key: bytes) -> build_pb2.Build | None:
        request = result_cache_pb2.GetResultRequest(key=check_key(key))
        try:
            build = self._stub.Get(request)
        except grpc.RpcError as error:
            if status_code_of(error) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from_rpc(error) from error
        return _received(build, key.hex())

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        encode_result(build)
        request = result_cache_pb2.PutResultRequest(key=check_key(key), build=build)
        try:
            self._stub.Put(request)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    def used_roots(self) -> Iterator[UsedRoot]:
        call = self._stub.List(result_cache_pb2.ListResultsRequest())
        try:
            for entry in call:
                yield _listed(entry)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()

    def evict(self, root: UsedRoot) -> bool:
        request = result_cache_pb2.EvictResultRequest(key=root.key, last_used=root.last_used)
        try:
            return self._stub.Evict(request).evicted
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    def close(self) -> None:
        self._channel.close()


def _build(params: Params) -> GrpcResultCache:
    """The ``family`` a store URL carries for the other services means nothing here."""
    url = params.string("url")
    family_param(params)
    return GrpcResultCache(url, security_params(params))


BACKEND = Backend("resultcache", "grpc", _build, GRPC_SCHEMES, from_url=grpc_url_params)

"""A PathInfoService backed by a remote store server over gRPC (either family).

What comes back is checked, not trusted: every record must decode into a
valid PathInfo, and a lookup must answer for the path that was asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

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
from builder.castore.wire import Family
from builder.errors import IntegrityError, InvalidArgumentError
from builder.store.path_info import PathInfo
from builder.store.store_path import check_digest
from builder.store.stubs import store_rpc
from builder.store.wire import path_info_from_proto, path_info_to_proto


def _received(message: Any, what: str) -> PathInfo:
    try:
        return path_info_from_proto(message, "path_info")
    except InvalidArgumentError as exc:
        raise IntegrityError(f"server sent a malformed path info for {what}: {exc}") from exc


class GrpcPathInfoService:
    def __init__(
        self, url: str, family: Family = Family.TVIX, security: ChannelSecurity | None = None
    ) -> None:
        self.url = url
        self._family = family
        self._channel = open_channel(url, security)
        rpc = store_rpc(family)
        self._messages = rpc.rpc
        self._stub = rpc.rpc_grpc.PathInfoServiceStub(self._channel)

    def get(self, digest: bytes) -> PathInfo | None:
        request = self._messages.GetPathInfoRequest(by_output_hash=check_digest(digest))
        try:
            message = self._stub.Get(request)
        except grpc.RpcError as error:
            if status_code_of(error) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from_rpc(error) from error
        info = _received(message, digest.hex())
        if info.path.digest != digest:
            raise IntegrityError(f"asked for path info {digest.hex()}, received {info.path}")
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        try:
            message = self._stub.Put(path_info_to_proto(info, self._family))
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        stored = _received(message, str(info.path))
        if stored.path != info.path:
            raise IntegrityError(f"put {info.path}, the server answered with {stored.path}")
        return stored

    def list(self) -> Iterator[PathInfo]:
        call = self._stub.List(self._messages.ListPathInfoRequest())
        try:
            for message in call:
                yield _received(message, "a listed path")
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()


def _build(params: Params) -> GrpcPathInfoService:
    return GrpcPathInfoService(params.string("url"), family_param(params), security_params(params))


BACKEND = Backend("pathinfo", "grpc", _build, GRPC_SCHEMES, from_url=grpc_url_params)

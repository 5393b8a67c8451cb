"""Requests decoded inside the call, so that a malformed message is the caller's error.

grpc decodes a request before any servicer runs and answers bytes that do not
parse (truncated fields, invalid UTF-8 in a string) with INTERNAL, as if the
server were broken, and the client never learns what it sent wrong. This
interceptor hands each handler the raw bytes and decodes them itself, answering
INVALID_ARGUMENT with the parser's reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

logger = logging.getLogger(__name__)

Decode = Callable[[bytes], Any]


class RequestDecodingInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _decoding(handler, handler_call_details.method)


def _decoder(decode: Decode, method: str) -> Callable[[bytes, grpc.ServicerContext], Any]:
    def parse(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            return decode(data)
        except DecodeError as error:
            peer = context.peer()
            logger.warning(
                "%s from %s: undecodable request: %s",
                method,
                peer,
                error,
                extra={"method": method, "peer": peer},
            )
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: the request is not a valid protobuf message ({error})",
            )
            raise AssertionError("context.abort returned") from error  # pragma: no cover

    return parse


def _decoding(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler taking raw bytes; streamed requests are decoded as they are read."""
    parse = _decoder(handler.request_deserializer, method)
    serialize = handler.response_serializer

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        for data in requests:
            yield parse(data, context)

    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(
            lambda requests, context: inner(stream(requests, context), context),
            response_serializer=serialize,
        )
    if handler.request_streaming:
        inner = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(
            lambda requests, context: inner(stream(requests, context), context),
            response_serializer=serialize,
        )
    if handler.response_streaming:
        inner = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            lambda data, context: inner(parse(data, context), context),
            response_serializer=serialize,
        )
    inner = handler.unary_unary
    return grpc.unary_unary_rpc_method_handler(
        lambda data, context: inner(parse(data, context), context),
        response_serializer=serialize,
    )

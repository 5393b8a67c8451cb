"""Every call a server answers, reported once with its method and the code it ended with.

The report is made when the call ends, from grpc's termination callback, so a
streaming call counts once however many messages it carried, and a call whose
client went away counts as CANCELLED even while its handler is still winding
down. Method names come from the client; only names of registered methods are
reported as they are, so a client cannot grow the set of names without bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

UNKNOWN_METHOD = "unknown"
"""The method reported for a call to a method no service offers."""

CallEnded = Callable[[str, grpc.StatusCode], None]


class CallCountingInterceptor(grpc.ServerInterceptor):
    def __init__(self, ended: CallEnded) -> None:
        self._ended = ended

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            self._ended(UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED)
            return None
        return _counted(handler, handler_call_details.method, self._ended)


class _Call:
    """One call, reported once when grpc ends it; the handler only says how it left.

    grpc runs the termination callback after the status went out, or as soon
    as the client went away, which may be while the handler still runs.
    """

    def __init__(self, method: str, context: grpc.ServicerContext, ended: CallEnded) -> None:
        self._method = method
        self._context = context
        self._ended = ended
        self._lock = threading.Lock()
        self._handler_done = False
        self._raised = False
        self._reported = False
        if not context.add_callback(self._terminated):
            self._terminated()

    def handler_returned(self) -> None:
        with self._lock:
            self._handler_done = True

    def handler_raised(self) -> None:
        with self._lock:
            self._handler_done = True
            self._raised = True

    def _terminated(self) -> None:
        """The status has gone out, or the client went away before the handler ended.

        A handler that raised without setting a code (a bug) gave its client
        UNKNOWN, which is what grpc answers then.
        """
        with self._lock:
            if self._reported:
                return
            self._reported = True
            if not self._handler_done:
                code = grpc.StatusCode.CANCELLED
            else:
                chosen = self._context.code()
                default = grpc.StatusCode.UNKNOWN if self._raised else grpc.StatusCode.OK
                code = chosen if isinstance(chosen, grpc.StatusCode) else default
        self._ended(self._method, code)


def _counted(
    handler: grpc.RpcMethodHandler, method: str, ended: CallEnded
) -> grpc.RpcMethodHandler:
    """The same handler, reporting how each of its calls ended."""
    serialize = handler.response_serializer
    deserialize = handler.request_deserializer
    if handler.response_streaming:
        stream = handler.stream_stream if handler.request_streaming else handler.unary_stream

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(method, context, ended)
            try:
                yield from stream(request, context)
            except GeneratorExit:
                # grpc dropped the responses (the call ended without them): the
                # termination callback reports the call, not the handler.
                raise
            except BaseException:
                call.handler_raised()
                raise
            call.handler_returned()

        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return make(streaming, request_deserializer=deserialize, response_serializer=serialize)
    unary = handler.stream_unary if handler.request_streaming else handler.unary_unary

    def single(request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(method, context, ended)
        try:
            response = unary(request, context)
        except BaseException:
            call.handler_raised()
            raise
        call.handler_returned()
        return response

    make = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(single, request_deserializer=deserialize, response_serializer=serialize)

"""Bearer-token authentication for servers reachable beyond this machine."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc

logger = logging.getLogger(__name__)

# Health checks stay open so that load balancers and probes need no secret.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty bearer token would admit everyone")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            return continuation(handler_call_details)
        reason = "no authorization header"
        for key, value in handler_call_details.invocation_metadata:
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return continuation(handler_call_details)
                reason = "wrong bearer token"
        return _deny(continuation(handler_call_details), method, reason)


def _deny(
    handler: grpc.RpcMethodHandler | None, method: str, reason: str
) -> grpc.RpcMethodHandler | None:
    """A handler of the same streaming shape that refuses the call.

    The refusal is logged there, where the peer is known; what the client
    sent is never logged, as a wrong token may be a near miss of the right one.
    """

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        logger.warning(
            "call refused",
            extra={"method": method, "peer": context.peer(), "reason": reason},
        )
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)

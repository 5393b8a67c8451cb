"""The one mapping from product errors to gRPC status codes, applied to every servicer.

Servicers raise ``builder.errors`` exceptions like any other caller would; the
``rpc_errors`` decorator turns them into a status with the exception's message
so that no servicer ever touches ``context`` for error handling. Anything that
is not a product error is a bug: it is logged here and the client only learns
that something went wrong inside, never internal details. The table itself is
``builder.castore.grpc.status``, shared with the clients that read it backwards.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import grpc

from builder.castore.grpc.status import STATUS_OF_ERROR
from builder.errors import BuilderError

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and message a client is shown for an exception."""
    for cls, code in STATUS_OF_ERROR:
        if isinstance(error, cls):
            return code, str(error) or cls.__name__
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _abort(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    code, message = status_of(error)
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


def call_description(context: grpc.ServicerContext, method: str, subject: str | None = None) -> str:
    """How logs name a call: what it is about, the method and the peer."""
    where = f"{method} from {context.peer()}"
    return f"{subject}: {where}" if subject else where


@contextmanager
def translated_errors(
    context: grpc.ServicerContext, method: str, subject: str | None = None
) -> Iterator[None]:
    """Abort the call with the status an exception raised inside stands for.

    Bugs are always logged, with their traceback, under ``subject`` (a build
    and its id) when there is one; how every build ended is logged where it
    ends (``builder.executor.reporting``).
    """
    where = call_description(context, method, subject)
    try:
        yield
    except BuilderError as error:
        _abort(context, error)
    except grpc.RpcError as error:
        # Only the request iterator raises this in a servicer: the client went
        # away mid-stream, so there is nobody left to tell anything interesting.
        logger.debug("%s: request stream broke: %s", where, error)
        context.abort(grpc.StatusCode.CANCELLED, "request stream was cancelled")
    except Exception as error:
        if context.code() is not None:
            # context.abort raised this after setting the call's status, which
            # is the answer the code inside chose; replacing it would hide why.
            raise
        logger.exception("%s failed unexpectedly", where)
        _abort(context, error)


Method = TypeVar("Method", bound=Callable[..., Any])


def rpc_errors(method: Method) -> Method:
    """Decorate a servicer method, unary or response-streaming, with ``translated_errors``.

    A response-streaming method is a generator, so its body runs only as grpc
    pulls responses; the translation has to wrap that iteration, not the call.
    """
    name = method.__qualname__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with translated_errors(context, name):
                yield from method(self, request, context)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with translated_errors(context, name):
            return method(self, request, context)

    return unary  # type: ignore[return-value]

"""A client-streaming call fed from the caller's thread through a bounded queue.

gRPC consumes a request iterator on its own thread; handing it messages
through a short queue gives the caller a plain ``send`` with backpressure, so
an upload never buffers more than a few messages however much is sent.
"""

from __future__ import annotations

import queue
import weakref
from collections.abc import Iterator
from typing import Any

import grpc

from builder.castore.grpc.status import error_from_rpc
from builder.errors import IntegrityError, InvalidArgumentError

QUEUE_DEPTH = 4
_POLL_SECONDS = 0.05

_END = object()


def _requests(messages: queue.Queue[object]) -> Iterator[Any]:
    """The request stream; it must not refer to the Upload, so an abandoned one is collected."""
    while (message := messages.get()) is not _END:
        yield message


def _cancel(future: grpc.Future, messages: queue.Queue[object]) -> None:
    """Cancel first, then end the request stream.

    gRPC half-closes a finished request stream only while the call is live;
    cancelling first guarantees the server sees a broken stream and commits
    nothing, never a clean end of a truncated one.
    """
    future.cancel()
    while True:
        try:
            messages.get_nowait()
        except queue.Empty:
            break
    messages.put_nowait(_END)


class Upload:
    """One client-streaming call; if dropped without ``finish``, it is cancelled."""

    def __init__(
        self,
        method: grpc.StreamUnaryMultiCallable,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self._messages: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._future: grpc.Future = method.future(_requests(self._messages), metadata=metadata)
        self._open = True
        self._cancel_if_abandoned = weakref.finalize(self, _cancel, self._future, self._messages)

    def _enqueue(self, item: object) -> None:
        if not self._open:
            raise InvalidArgumentError("upload already finished")
        while True:
            try:
                self._messages.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                if self._future.done():
                    self._open = False
                    self._result()
                    raise IntegrityError(
                        "server answered before the request stream ended"
                    ) from None

    def send(self, message: Any) -> None:
        """Queue one message; raises the server's error once the call has failed."""
        self._enqueue(message)

    def finish(self) -> Any:
        """End the request stream and wait for the response."""
        self._enqueue(_END)
        self._open = False
        return self._result()

    def _result(self) -> Any:
        self._cancel_if_abandoned.detach()
        try:
            return self._future.result()
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    def cancel(self) -> None:
        """Abandon the call; the server sees it cancelled and stores nothing."""
        self._open = False
        self._cancel_if_abandoned()

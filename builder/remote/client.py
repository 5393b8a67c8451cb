"""One build request run on a server through ``builder.v1.BuildEvents/StreamBuild``.

The streaming RPC rather than ``DoBuild`` so that the log arrives while the
build runs; leaving the stream (on an error, Ctrl-C or SIGTERM) cancels the
call, and the server stops the build when its client hangs up.

The address may name several builders (see ``parse_client_endpoint``): the
channel spreads calls over them, and a build one refuses as busy or loses by
dying is sent again as a whole, which the channel routes to the next one.
Inputs are uploaded once, before the first attempt; a builder the retry
reaches sees them only if the builders share a store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.copying import Castore, copy_missing
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.metadata import NODE_KEY
from builder.castore.grpc.security import ChannelSecurity
from builder.castore.nodes import Node
from builder.castore.progress import TransferKind, TransferProgress, TransferReporters
from builder.castore.wire import Family, node_from_proto
from builder.errors import CancelledError, CommandFailedError, IntegrityError
from builder.executor.cancel import CancelToken
from builder.executor.request import BuildRequest, request_to_proto
from builder.executor.service import Event, LogData, Started
from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc
from builder.remote.errors import naming_server, remote_error
from builder.remote.retry import DEFAULT_RETRY, RetryBudget, RetryPolicy, pause

logger = logging.getLogger(__name__)

UNKNOWN_NODE = "unknown"

# Refusals that say nothing about the request: another builder may take it.
_RETRIED_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True)
class RemoteOutcome:
    response: Any
    """The Snix ``BuildResponse``, as ``DoBuild`` would have answered."""
    outputs: list[Node]
    builder: str = UNKNOWN_NODE
    """The node name of the builder that answered."""
    retries: int = 0
    failed_on: tuple[str, ...] = ()
    """Builders that refused or lost the build before, in order."""


class _Retryable(Exception):
    """An attempt refused or cut off for reasons of its builder, not of the request."""

    def __init__(self, error: Exception, builder: str, code: grpc.StatusCode) -> None:
        super().__init__(str(error))
        self.error = error
        self.builder = builder
        self.code = code


class RemoteBuilder:
    """A server's (or a fleet's) builds and castore; ``reporters`` hears of every upload and
    fetch, ``retry`` bounds how often a build is sent again."""

    def __init__(
        self,
        address: str,
        security: ChannelSecurity | None = None,
        reporters: TransferReporters | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.address = address
        self._reporters = reporters
        self._retry = retry
        self._channel = open_channel(address, security, health_checked=True)
        self.castore = Castore(
            GrpcBlobService(address, Family.SNIX, security),
            GrpcDirectoryService(address, Family.SNIX, security),
        )
        self._events = events_grpc.BuildEventsStub(self._channel)

    def __enter__(self) -> RemoteBuilder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def build(
        self,
        request: BuildRequest,
        blobs: BlobService,
        directories: DirectoryService,
        on_event: Callable[[Event], None],
        cancel: CancelToken | None = None,
    ) -> RemoteOutcome:
        """Upload what the server lacks of the inputs, then run the build there."""
        request.validate()
        local = Castore(blobs, directories)
        with naming_server(self.address), self._reporting(TransferKind.UPLOAD) as progress:
            sent = copy_missing(request.inputs, local, self.castore, progress)
        logger.info("uploaded %s to %s", sent, self.address)
        return self.stream(request, on_event, cancel)

    def stream(
        self,
        request: BuildRequest,
        on_event: Callable[[Event], None],
        cancel: CancelToken | None = None,
    ) -> RemoteOutcome:
        """Run the build; cancelling ``cancel`` cancels the call, which stops the build there.

        A retried build starts over: ``on_event`` hears a second ``Started``
        and the log again from its beginning.
        """
        message = request_to_proto(request, Family.SNIX)
        budget = RetryBudget(self._retry)
        failed_on: list[str] = []
        while True:
            try:
                outcome = self._attempt(message, on_event, cancel)
            except _Retryable as refused:
                failed_on.append(refused.builder)
                delay = budget.next_delay()
                fields = {"builder": refused.builder, "code": refused.code.name}
                if delay is None:
                    logger.warning(
                        "build attempt on builder %s failed: %s; no retries left",
                        refused.builder,
                        refused.error,
                        extra={**fields, "retries": budget.used},
                    )
                    raise refused.error from refused.error.__cause__
                logger.warning(
                    "build attempt on builder %s failed: %s; retry %d in %.1f s",
                    refused.builder,
                    refused.error,
                    budget.used,
                    delay,
                    extra={**fields, "retry": budget.used, "delay_seconds": round(delay, 3)},
                )
                pause(delay, cancel)
                if cancel is not None and cancel.cancelled:
                    raise CancelledError("build cancelled") from refused.error
                continue
            logger.info(
                "build done by builder %s",
                outcome.builder,
                extra={"builder": outcome.builder, "retries": budget.used},
            )
            return RemoteOutcome(
                outcome.response, outcome.outputs, outcome.builder, budget.used, tuple(failed_on)
            )

    def _attempt(
        self, message: Any, on_event: Callable[[Event], None], cancel: CancelToken | None
    ) -> RemoteOutcome:
        call = self._events.StreamBuild(message)
        if cancel is not None:
            cancel.attach(call)
        try:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "started":
                    on_event(Started(event.started.build_id, event.started.cached))
                elif kind == "log":
                    on_event(LogData(event.log.data))
                elif kind == "completed":
                    response = event.completed.response
                    outputs = [
                        node_from_proto(o.output, f"outputs[{i}]")
                        for i, o in enumerate(response.outputs)
                    ]
                    return RemoteOutcome(response, outputs, _node_of(call))
                elif kind == "failed":
                    failed = event.failed
                    raise CommandFailedError(
                        failed.message,
                        None if failed.exit_code == -1 else failed.exit_code,
                        failed.signal or None,
                        failed.limit or None,
                    )
        except grpc.RpcError as error:
            if cancel is not None and cancel.cancelled:
                raise CancelledError("build cancelled") from error
            translated = remote_error(error, self.address)
            translated.__cause__ = error
            code = error.code() if isinstance(error, grpc.Call) else None
            if code in _RETRIED_CODES:
                raise _Retryable(translated, _node_of(call), code) from error
            raise translated from error
        finally:
            if cancel is not None:
                cancel.detach()
            call.cancel()
        raise IntegrityError(f"{self.address} ended the build stream without a result")

    def fetch(self, outputs: list[Node], blobs: BlobService, directories: DirectoryService) -> None:
        """Copy the outputs into the local store, where they can be materialised."""
        local = Castore(blobs, directories)
        with naming_server(self.address), self._reporting(TransferKind.FETCH) as progress:
            got = copy_missing(outputs, self.castore, local, progress)
        logger.info("fetched %s from %s", got, self.address)

    @contextlib.contextmanager
    def _reporting(self, kind: TransferKind) -> Iterator[TransferProgress | None]:
        if self._reporters is None:
            yield None
            return
        with self._reporters.transfer(kind) as progress:
            yield progress

    def close(self) -> None:
        self.castore.blobs.close()
        self.castore.directories.close()
        self._channel.close()


def _node_of(call: Any) -> str:
    """The builder's name from the call's initial metadata, once the call has ended or
    answered; ``UNKNOWN_NODE`` if the call never reached one."""
    for key, value in call.initial_metadata() or ():
        if key == NODE_KEY:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return UNKNOWN_NODE

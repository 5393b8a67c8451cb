"""One build request run on a server through ``builder.v1.BuildEvents/StreamBuild``.

The streaming RPC rather than ``DoBuild`` so that the log arrives while the
build runs; leaving the stream (on an error, Ctrl-C or SIGTERM) cancels the
call, and the server stops the build when its client hangs up.
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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteOutcome:
    response: Any
    """The Snix ``BuildResponse``, as ``DoBuild`` would have answered."""
    outputs: list[Node]


class RemoteBuilder:
    """A server's builds and castore; ``reporters`` hears of every upload and fetch."""

    def __init__(
        self,
        address: str,
        security: ChannelSecurity | None = None,
        reporters: TransferReporters | None = None,
    ) -> None:
        self.address = address
        self._reporters = reporters
        self._channel = open_channel(address, security)
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
        """Run the build; cancelling ``cancel`` cancels the call, which stops the build there."""
        call = self._events.StreamBuild(request_to_proto(request, Family.SNIX))
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
                    return RemoteOutcome(response, outputs)
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
            raise remote_error(error, self.address) from error
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

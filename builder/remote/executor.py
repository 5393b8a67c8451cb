"""A remote server as a build executor, so Nix interop can build there unchanged.

Inputs are uploaded where the server lacks them, the build streams its log
back, and outputs are fetched into the local store, where the caller expects
them for NAR hashing, fixed-output checks and export to Nix.
"""

from __future__ import annotations

import os

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.grpc.security import ChannelSecurity
from builder.castore.progress import TransferReporters
from builder.errors import CancelledError
from builder.executor.cancel import CancelToken
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest
from builder.executor.service import BuildOutcome, Event, EventSink, Started
from builder.remote.client import RemoteBuilder
from builder.remote.retry import DEFAULT_RETRY, RetryPolicy


class RemoteBuildExecutor:
    def __init__(
        self,
        address: str,
        blobs: BlobService,
        directories: DirectoryService,
        security: ChannelSecurity | None = None,
        job_slots: int | None = None,
        build_cores: int | None = None,
        reporters: TransferReporters | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.blobs = blobs
        self.directories = directories
        self._remote = RemoteBuilder(address, security, reporters, retry)
        self._job_slots = job_slots or os.cpu_count() or 1
        self._build_cores = build_cores or os.cpu_count() or 1

    @property
    def job_slots(self) -> int:
        return self._job_slots

    @property
    def build_cores(self) -> int:
        return self._build_cores

    def build(
        self,
        request: BuildRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
    ) -> BuildOutcome:
        if cancel is not None and cancel.cancelled:
            raise CancelledError("build cancelled before it was sent")
        started: list[Started] = []

        def relay(event: Event) -> None:
            if isinstance(event, Started):
                started.append(event)
            if on_event is not None:
                on_event(event)

        outcome = self._remote.build(request, self.blobs, self.directories, relay, cancel)
        self._remote.fetch(outcome.outputs, self.blobs, self.directories)
        outputs = [
            CollectedOutput(path, node, tuple(message.needles))
            for path, node, message in zip(
                request.outputs, outcome.outputs, outcome.response.outputs, strict=True
            )
        ]
        # A retried build started more than once; the last start is the one that finished.
        build_id = started[-1].build_id if started else ""
        cached = bool(started and started[-1].cached)
        return BuildOutcome(build_id, outputs, cached)

    def close(self) -> None:
        self._remote.close()

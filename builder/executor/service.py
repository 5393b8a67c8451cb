"""The build service: one entry point for every face the product has.

The gRPC servicers of both families, the streaming RPC and the ``run`` command
all call ``BuildService.build``; it validates, checks constraints and inputs,
answers from the result cache where it can, waits for a job slot, runs, and
records the result.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Protocol

from builder.castore.blobs.service import BlobService
from builder.castore.collection import Leases
from builder.castore.directories.service import DirectoryService
from builder.castore.hit_counts import HitCounts
from builder.errors import ResourceExhaustedError
from builder.executor.admission import Admission
from builder.executor.cancel import CancelToken
from builder.executor.config import BuildConfig
from builder.executor.constraints import check_constraints
from builder.executor.draining import Draining
from builder.executor.inputs import check_input_sizes, missing_inputs, require_inputs
from builder.executor.logs import LogStore
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.observer import BuildObserver
from builder.executor.outcome import Outcome, outcome_of
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest
from builder.executor.results import record_result, recorded_result
from builder.executor.runner import BuildRunner
from builder.executor.slots import JobSlots
from builder.store.results.service import ResultCache
from sandbox import Launcher


@dataclass(frozen=True)
class Started:
    build_id: str
    cached: bool


@dataclass(frozen=True)
class LogData:
    data: bytes


Event = Started | LogData
EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class BuildOutcome:
    build_id: str
    outputs: list[CollectedOutput]
    cached: bool


def new_build_id() -> str:
    """A fresh build id; a server takes one before building so its log names the build."""
    return uuid.uuid4().hex


class BuildExecutor(Protocol):
    """What callers that turn their own formats into requests (Nix interop) build on:
    this service locally, or a remote server through ``builder.remote``."""

    blobs: BlobService
    directories: DirectoryService

    @property
    def job_slots(self) -> int: ...

    @property
    def build_cores(self) -> int: ...

    def build(
        self,
        request: BuildRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
    ) -> BuildOutcome: ...


class BuildService:
    def __init__(
        self,
        config: BuildConfig,
        blobs: BlobService,
        directories: DirectoryService,
        launcher: Launcher,
        results: ResultCache,
    ) -> None:
        """``results`` is the store's result cache, which builders sharing the store share."""
        self.config = config
        self.blobs = blobs
        self.directories = directories
        self.cache = MaterialisationCache(
            config.work_dir / "cache", blobs, directories, config.cache_max_bytes
        )
        self._runner = BuildRunner(config, blobs, directories, launcher, self.cache)
        self._slots = JobSlots(config.job_slots, config.queue_length)
        self._results = results
        self.result_cache_counts = HitCounts()
        self._observers: list[BuildObserver] = []
        self.leases = Leases()
        self.logs = LogStore(config.log_retention_seconds)
        self._draining = Draining()
        self._followers = Admission(
            config.log_followers,
            lambda held: f"{held} clients already follow build logs; try again later",
        )

    @property
    def job_slots(self) -> int:
        return self.config.job_slots

    @property
    def results(self) -> ResultCache:
        """The result cache, whose entries a garbage collection treats as roots."""
        return self._results

    @property
    def build_cores(self) -> int:
        return self.config.build_cores

    @property
    def capacity(self) -> int:
        """Builds admitted at once (running or queued); a server sizes its threads by it."""
        return self._slots.capacity

    @property
    def admitted(self) -> int:
        return self._slots.admitted

    @property
    def queued(self) -> int:
        return self._slots.waiting

    @property
    def busy_slots(self) -> int:
        """Job slots held now by builds setting up their sandbox or running."""
        return self._slots.busy

    def observe(self, observer: BuildObserver) -> None:
        """Report every build's start and end to ``observer`` from now on."""
        self._observers.append(observer)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one build from the moment its caller turns up, or refuse it.

        Raises ResourceExhaustedError at once when running and queued builds
        fill every job slot and the queue. A refused build never reaches
        ``build``, so it is reported to the observers here, as a build that
        started and ended ``rejected`` at once.
        """
        with ExitStack() as held:
            try:
                held.enter_context(self._slots.admit())
            except ResourceExhaustedError:
                for observer in self._observers:
                    observer.build_started()
                    observer.build_finished(Outcome.REJECTED, 0.0)
                raise
            yield

    @property
    def log_followers(self) -> int:
        """Clients following a log now; ``config.log_followers`` at most."""
        return self._followers.held

    def follow_log(self, build_id: str, stop: Callable[[], bool]) -> Iterator[bytes]:
        """A build's log so far and as it grows, for a bounded number of clients at once.

        Raises NotFoundError for a build whose log is not kept, and
        ResourceExhaustedError when too many clients follow logs already.
        """
        with self._followers.hold():
            yield from self.logs.get(build_id).follow(stop)

    def stop_admitting(self) -> None:
        """Refuse every new build with UnavailableError; those in progress go on."""
        self._draining.stop_admitting()

    def wait_idle(self, timeout: float) -> bool:
        """Whether no build is in progress, waiting at most ``timeout`` seconds for it."""
        return self._draining.wait_idle(timeout)

    def cancel_running(self) -> int:
        """Cancel every build in progress (they fail with UnavailableError); how many."""
        return self._draining.cancel_running()

    @property
    def running(self) -> int:
        """Builds in progress, from their first check to their result, queued ones included."""
        return self._draining.running

    def build(
        self,
        request: BuildRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
        build_id: str | None = None,
    ) -> BuildOutcome:
        """Build ``request``, reporting its start and its outcome to every observer once.

        A build refused because the service is stopping never started, so
        observers hear only of builds admitted; one cancelled by the shutdown
        ends ``cancelled``.
        """
        cancel = cancel or CancelToken()
        with self._draining.build(cancel):
            began = time.monotonic()
            for observer in self._observers:
                observer.build_started()
            try:
                # The inputs are a lease that a collection in this process keeps.
                with self.leases.hold(request.inputs):
                    outcome = self._build(request, on_event, cancel, build_id)
            except BaseException as error:
                self._finished(outcome_of(error), began)
                raise
            self._finished(outcome_of(None, outcome.cached), began)
            return outcome

    def _finished(self, outcome: Outcome, began: float) -> None:
        seconds = time.monotonic() - began
        for observer in self._observers:
            observer.build_finished(outcome, seconds)

    def _build(
        self,
        request: BuildRequest,
        on_event: EventSink | None,
        cancel: CancelToken,
        build_id: str | None,
    ) -> BuildOutcome:
        emit = on_event or (lambda event: None)
        build_id = build_id or new_build_id()
        request.validate()
        check_constraints(request.constraints, self.config)
        check_input_sizes(request.inputs, self.config.max_input_size)
        require_inputs(request.inputs, self.blobs, self.directories, self.cache)

        if self.config.result_cache:
            recorded = recorded_result(self._results, request)
            if recorded is not None and missing_inputs(
                tuple(o.node.renamed(b"o") for o in recorded), self.blobs, self.directories
            ):
                recorded = None
            self.result_cache_counts.count(recorded is not None)
            if recorded is not None:
                emit(Started(build_id, cached=True))
                return BuildOutcome(build_id, recorded, cached=True)

        log = self.logs.open(build_id)

        def on_log(data: bytes) -> None:
            log.append(data)
            emit(LogData(data))

        @contextmanager
        def slot() -> Iterator[None]:
            with self._slots.slot(cancel):
                emit(Started(build_id, cached=False))
                yield

        try:
            outputs = self._runner.run(request, on_log, cancel, slot)
        finally:
            log.finish()
        if self.config.result_cache:
            record_result(self._results, request, outputs)
        return BuildOutcome(build_id, outputs, cached=False)

    def wait_for_removals(self) -> None:
        """Return once the work trees of the builds that have answered are removed."""
        self._runner.wait_for_removals()

    def close(self) -> None:
        """The result cache is the store's, closed with it."""
        self.cache.close()
        self._runner.close()

"""Running a bound server until the operator stops it, letting builds and calls in flight end.

On SIGTERM or SIGINT the server drains: health turns NOT_SERVING for every
service so load balancers send nothing new, new builds are refused with
UNAVAILABLE, and builds already running (and every other call) get the grace
period to end. Builds still running after it, or at once on a second signal,
are cancelled: their processes are killed and their clients get UNAVAILABLE.
Calls still in flight then get what is left of the grace (at least
``REPLY_SECONDS``, so that cancelled builds' answers reach their clients)
before the server stops.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Protocol

import grpc
from grpc_health.v1 import health

from builder.executor.draining import DEFAULT_SHUTDOWN_GRACE

logger = logging.getLogger(__name__)

# How long calls in flight get once builds have ended, when the grace is spent.
REPLY_SECONDS = 2.0
# How long cancelled builds get to end (their processes killed) before the server stops anyway.
CANCEL_SECONDS = 30.0
# How often the main thread looks for a signal while it waits: a handler runs
# only on the main thread, and only sets an event, which a short wait sees soon.
_POLL_SECONDS = 0.1


class DrainableBuilds(Protocol):
    """What a server stops gracefully: a build service that can refuse, drain and cancel."""

    @property
    def running(self) -> int: ...

    def stop_admitting(self) -> None: ...

    def wait_idle(self, timeout: float) -> bool: ...

    def cancel_running(self) -> int: ...


class _Signals:
    """Counts SIGTERM and SIGINT; the handler only records them, the main thread acts."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self.second = threading.Event()
        self.received: list[str] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        (self.second if self.first.is_set() else self.first).set()


def run_until_signalled(
    server: grpc.Server,
    checker: health.HealthServicer | None = None,
    grace: float = DEFAULT_SHUTDOWN_GRACE,
    builds: DrainableBuilds | None = None,
) -> None:
    """Start the server, and drain and stop it on SIGTERM or SIGINT (see the module)."""
    signals = _Signals()
    previous = {sig: signal.signal(sig, signals) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        # A signal may be delivered to any thread, and Python runs its handler
        # only when the main thread next executes bytecode: a wait without a
        # timeout would never return if one of gRPC's threads took the signal.
        while not signals.first.wait(_POLL_SECONDS):
            pass
        deadline = time.monotonic() + grace
        logger.info(
            "shutting down: no new builds, running ones and other calls may finish",
            extra={"signal": signals.received[0], "grace_seconds": grace},
        )
        if checker is not None:
            checker.enter_graceful_shutdown()
        if builds is not None:
            _drain(builds, signals, deadline)
        hurried = signals.second.is_set()
        left = REPLY_SECONDS if hurried else max(deadline - time.monotonic(), REPLY_SECONDS)
        logger.info("shutting down: stopping the server", extra={"grace_seconds": round(left, 1)})
        stopped = server.stop(left)
        cut_off = hurried
        while not stopped.wait(_POLL_SECONDS):
            if signals.second.is_set() and not cut_off:
                logger.warning("shutting down: second signal, calls in flight are cut off")
                server.stop(0)
                cut_off = True
        logger.info("shut down")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drain(builds: DrainableBuilds, signals: _Signals, deadline: float) -> None:
    """Refuse new builds, wait for running ones until ``deadline`` or a second signal, then
    cancel what is left and wait for it to end."""
    builds.stop_admitting()
    while not builds.wait_idle(_POLL_SECONDS):
        if signals.second.is_set() or time.monotonic() >= deadline:
            why = "second signal" if signals.second.is_set() else "grace period over"
            cancelled = builds.cancel_running()
            logger.warning(
                "shutting down: %s, running builds cancelled",
                why,
                extra={"reason": why, "cancelled": cancelled},
            )
            if not builds.wait_idle(CANCEL_SECONDS):
                logger.error(
                    "shutting down: cancelled builds did not end in time",
                    extra={"running_builds": builds.running, "waited_seconds": CANCEL_SECONDS},
                )
            return
    logger.info("shutting down: every build has ended")

"""Running a bound server until the operator stops it, letting calls in flight finish."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import grpc
from grpc_health.v1 import health

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 10.0


def run_until_signalled(
    server: grpc.Server,
    checker: health.HealthServicer | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> None:
    """Start the server and stop it gracefully on SIGTERM or SIGINT.

    Health turns NOT_SERVING first so that load balancers stop sending new
    calls while running ones get ``grace`` seconds to finish.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        stop.wait()
        logger.info(
            "stopping, %.1f s grace for running calls", grace, extra={"grace_seconds": grace}
        )
        if checker is not None:
            checker.enter_graceful_shutdown()
        server.stop(grace).wait()
        logger.info("server stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

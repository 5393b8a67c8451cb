"""Stopping a build service without cutting builds short: refuse new ones, let running ones end.

A server being stopped (an upgrade, a host going down) should lose no work it
can still finish: it stops admitting builds, waits for those in progress for
a grace period, and only then cancels what is left. Every build, whichever
face it came through (either gRPC family, the event stream, a Nix hand-off
session), passes through one ``Draining``, which is all of that in plain
Python, testable without a server.

A build refused or cancelled here raises ``UnavailableError``, not
``CancelledError``: the client did not give up, the server went away, and
UNAVAILABLE is the code clients take as "try again, possibly elsewhere".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from builder.errors import CancelledError, UnavailableError
from builder.executor.cancel import CancelToken

logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_GRACE = 60.0
SHUTTING_DOWN = "server is shutting down"


class Draining:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._admitting = True
        self._cancelling = False
        self._running: dict[int, CancelToken] = {}
        self._next = 0

    @property
    def running(self) -> int:
        """Builds entered and not yet ended, queued ones included."""
        return len(self._running)

    @contextmanager
    def build(self, cancel: CancelToken) -> Iterator[None]:
        """Hold a build's place until it ends; refuse it once the service stops admitting.

        ``cancel`` is the build's own token, which ``cancel_running`` sets; a
        build that ends cancelled after that is reported as the shutdown.
        """
        with self._cond:
            if not self._admitting:
                raise UnavailableError(f"{SHUTTING_DOWN}: no new builds are taken")
            key = self._next
            self._next += 1
            self._running[key] = cancel
        try:
            yield
        except CancelledError as error:
            if self._cancelling:
                raise UnavailableError(
                    f"{SHUTTING_DOWN}: the build was cancelled before it ended"
                ) from error
            raise
        finally:
            with self._cond:
                del self._running[key]
                self._cond.notify_all()

    def stop_admitting(self) -> None:
        """From now on every new build is refused with ``UnavailableError``."""
        with self._cond:
            self._admitting = False
            running = len(self._running)
        logger.info("builds: no new ones admitted", extra={"running_builds": running})

    def wait_idle(self, timeout: float) -> bool:
        """Whether every build has ended, waiting at most ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def cancel_running(self) -> int:
        """Cancel every build in progress and refuse new ones; the number cancelled.

        Each ends as its cancellation is honoured (a sandbox's processes are
        killed, a queued build leaves the queue); ``wait_idle`` tells when.
        """
        with self._cond:
            self._admitting = False
            self._cancelling = True
            tokens = list(self._running.values())
        for token in tokens:
            token.cancel()
        return len(tokens)

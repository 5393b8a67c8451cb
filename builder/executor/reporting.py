"""The lines an operator reads about each build a server takes: one when it starts, one when
it ends, with who asked, through which protocol, how it ended and how long it took.

Every face of the server (both gRPC families, the streaming call, the Nix
hand-off) wraps its build in ``reported_build``, so the lines and their fields
are the same whichever way a build came in. A build refused before it starts
(the queue is full, the request is malformed) gets a single line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from builder.errors import BuilderError, CommandFailedError
from builder.executor.outcome import Outcome, outcome_of

logger = logging.getLogger(__name__)

# A build's own failure is its author's business; what needs the operator
# (capacity, limits, a backend or the builder itself) stands out.
_LEVELS = {
    Outcome.SUCCEEDED: logging.INFO,
    Outcome.CACHED: logging.INFO,
    Outcome.FAILED: logging.INFO,
    Outcome.CANCELLED: logging.INFO,
    Outcome.INVALID: logging.INFO,
    Outcome.LIMIT: logging.WARNING,
    Outcome.REJECTED: logging.WARNING,
    Outcome.ERROR: logging.ERROR,
}


@dataclass(frozen=True)
class Caller:
    """Who asked for a build: ``peer`` as the transport names it, ``family`` the protocol."""

    peer: str
    family: str


class BuildReport:
    """One build's lines; the caller marks it started once admitted, and how it ended."""

    def __init__(self, build_id: str, caller: Caller) -> None:
        self._fields: dict[str, Any] = {
            "build_id": build_id,
            "peer": caller.peer,
            "family": caller.family,
        }
        self._since = time.monotonic()
        self._started = False
        self._settled = False
        self._ending: BaseException | None = None
        self.cached = False

    def start(self) -> None:
        """The build holds its place: log it, and time it from here."""
        self._started = True
        self._since = time.monotonic()
        logger.info("build started", extra=self._fields)

    def settle(self, error: BaseException | None = None) -> None:
        """The build ended (with ``error``, if it failed) while its call goes on.

        A streaming call reports the end as an event; whatever then happens to
        the call (the client hangs up once it has the result) is not the build's.
        """
        if not self._settled:
            self._settled = True
            self._ending = error

    def end(self, error: BaseException | None) -> None:
        """Log the end: as settled, or else with what ended the call (None: it returned)."""
        outcome, fields = _outcome(self._ending if self._settled else error, self.cached)
        extra = {
            **self._fields,
            "outcome": outcome,
            **fields,
            "duration_seconds": round(time.monotonic() - self._since, 3),
        }
        message = "build finished" if self._started else "build refused"
        logger.log(_LEVELS[outcome], message, extra=extra)


@contextmanager
def reported_build(build_id: str, caller: Caller) -> Iterator[BuildReport]:
    """Log how the build inside ended, whether it returned or raised."""
    report = BuildReport(build_id, caller)
    try:
        yield report
    except BaseException as error:
        report.end(error)
        raise
    report.end(None)


def _outcome(error: BaseException | None, cached: bool) -> tuple[Outcome, dict[str, Any]]:
    """The outcome (as metrics count it) and the fields that say more about it."""
    if isinstance(error, GeneratorExit):
        return Outcome.CANCELLED, {"error": "the client went away"}
    outcome = outcome_of(error, cached)
    if error is None:
        return outcome, {}
    if not isinstance(error, BuilderError):
        # A bug: whoever catches it logs its traceback; this line only ends the build.
        return outcome, {"error": f"internal error: {type(error).__name__}"}
    fields: dict[str, Any] = {"error": str(error) or type(error).__name__}
    if isinstance(error, CommandFailedError):
        if error.limit:
            fields["limit"] = error.limit
        if error.exit_code is not None:
            fields["exit_code"] = error.exit_code
        if error.signal:
            fields["signal"] = error.signal
    return outcome, fields

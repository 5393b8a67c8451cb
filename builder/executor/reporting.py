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

from builder.errors import (
    BuilderError,
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)

logger = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
CACHED = "cached"
FAILED = "failed"
LIMIT = "limit"
CANCELLED = "cancelled"
REJECTED = "rejected"
INVALID = "invalid"
ERROR = "error"

# A build's own failure is its author's business; what needs the operator
# (capacity, limits, a backend or the builder itself) stands out.
_LEVELS = {
    SUCCEEDED: logging.INFO,
    CACHED: logging.INFO,
    FAILED: logging.INFO,
    CANCELLED: logging.INFO,
    INVALID: logging.INFO,
    LIMIT: logging.WARNING,
    REJECTED: logging.WARNING,
    ERROR: logging.ERROR,
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


def _outcome(error: BaseException | None, cached: bool) -> tuple[str, dict[str, Any]]:
    """The outcome's name and the fields that say more about it."""
    if error is None:
        return (CACHED if cached else SUCCEEDED), {}
    fields: dict[str, Any] = {"error": str(error) or type(error).__name__}
    if isinstance(error, CommandFailedError):
        if error.limit:
            return LIMIT, {"limit": error.limit, **fields}
        if error.exit_code is not None:
            fields["exit_code"] = error.exit_code
        if error.signal:
            fields["signal"] = error.signal
        return FAILED, fields
    if isinstance(error, BuildFailedError):
        return FAILED, fields
    if isinstance(error, GeneratorExit):
        return CANCELLED, {"error": "the client went away"}
    if isinstance(error, CancelledError | KeyboardInterrupt):
        return CANCELLED, fields
    if isinstance(error, ResourceExhaustedError):
        return REJECTED, fields
    if isinstance(error, InvalidArgumentError | NotFoundError | FailedPreconditionError):
        return INVALID, fields
    if isinstance(error, BuilderError):
        return ERROR, fields
    # A bug: whoever catches it logs its traceback; this line only ends the build.
    return ERROR, {"error": f"internal error: {type(error).__name__}"}

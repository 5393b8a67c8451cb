"""How a build ended, in the one vocabulary every report of builds uses.

Logs, metrics and anything else that tells an operator about finished builds
name the ending with these words, so that a count of ``failed`` builds and the
log lines saying ``failed`` always describe the same builds. The ending is
read off what the build service returned or raised, and nothing else, so any
caller of ``BuildService.build`` can classify it the same way.
"""

from __future__ import annotations

import enum

from builder.errors import (
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    """The command ran and its outputs were stored."""
    CACHED = "cached"
    """Answered from the result cache; nothing ran."""
    FAILED = "failed"
    """The command ran and failed (exit code, signal), or left outputs that cannot be stored."""
    LIMIT = "limit"
    """The command was stopped by a limit (wall time, silence, memory, log size, ...)."""
    CANCELLED = "cancelled"
    """The client went away or the command was interrupted before the build ended."""
    REJECTED = "rejected"
    """A bound of the builder refused it: the queue was full, no build uid was free."""
    INVALID = "invalid"
    """The request could never run here: malformed, unmet constraints, inputs missing."""
    ERROR = "error"
    """The builder itself failed (launcher gone, store unreachable, corrupt data, a bug)."""


def outcome_of(error: BaseException | None, cached: bool = False) -> Outcome:
    """The outcome of a build that raised ``error``, or returned (``error`` None).

    ``cached`` says whether a returned build was answered from the result cache.
    The order of the checks matters: a limit is a kind of command failure, and
    both are build failures.
    """
    if error is None:
        return Outcome.CACHED if cached else Outcome.SUCCEEDED
    if isinstance(error, CommandFailedError) and error.limit:
        return Outcome.LIMIT
    if isinstance(error, BuildFailedError):
        return Outcome.FAILED
    if isinstance(error, CancelledError | KeyboardInterrupt):
        return Outcome.CANCELLED
    if isinstance(error, ResourceExhaustedError):
        return Outcome.REJECTED
    if isinstance(error, InvalidArgumentError | FailedPreconditionError | NotFoundError):
        return Outcome.INVALID
    return Outcome.ERROR

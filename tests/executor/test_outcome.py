"""The outcome vocabulary: every way a build can end maps to exactly one word."""

from __future__ import annotations

import pytest

from builder.errors import (
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    FailedPreconditionError,
    IntegrityError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from builder.executor.outcome import Outcome, outcome_of


def test_a_returned_build_succeeded_or_was_cached() -> None:
    assert outcome_of(None) is Outcome.SUCCEEDED
    assert outcome_of(None, cached=True) is Outcome.CACHED


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (CommandFailedError("build failed: exited with code 1", exit_code=1), Outcome.FAILED),
        (CommandFailedError("killed by signal 9", signal=9), Outcome.FAILED),
        (CommandFailedError("stopped by the memory limit", limit="memory"), Outcome.LIMIT),
        (BuildFailedError("outputs cannot be stored"), Outcome.FAILED),
        (CancelledError("build cancelled while queued"), Outcome.CANCELLED),
        (KeyboardInterrupt(), Outcome.CANCELLED),
        (ResourceExhaustedError("queue full"), Outcome.REJECTED),
        (InvalidArgumentError("command_args: empty"), Outcome.INVALID),
        (FailedPreconditionError("system: not offered"), Outcome.INVALID),
        (NotFoundError("input missing"), Outcome.INVALID),
        (UnavailableError("launcher gone"), Outcome.ERROR),
        (IntegrityError("blob rotted"), Outcome.ERROR),
        (RuntimeError("a bug"), Outcome.ERROR),
    ],
)
def test_a_raised_build_is_classified_by_its_error(error: BaseException, expected: Outcome) -> None:
    assert outcome_of(error) is expected


def test_outcomes_are_the_words_reports_print() -> None:
    assert [str(o) for o in Outcome] == [
        "succeeded",
        "cached",
        "failed",
        "limit",
        "cancelled",
        "rejected",
        "invalid",
        "error",
    ]

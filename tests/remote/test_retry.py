"""The bounds on retries: how many, how long apart, and how late one may start."""

from __future__ import annotations

import pytest

from builder.errors import InvalidArgumentError
from builder.remote.retry import RetryBudget, RetryPolicy


def test_pauses_double_up_to_the_longest() -> None:
    policy = RetryPolicy(retries=6, total_seconds=3600.0, first_delay=1.0, max_delay=8.0)
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for retry, ceiling in enumerate(ceilings, start=1):
        assert ceiling / 2 <= policy.delay(retry) <= ceiling


def test_the_count_bounds_retries() -> None:
    budget = RetryBudget(RetryPolicy(retries=2, total_seconds=3600.0, first_delay=0.001))
    assert budget.next_delay() is not None
    assert budget.next_delay() is not None
    assert budget.next_delay() is None
    assert budget.used == 2


def test_no_retry_starts_past_the_time_bound() -> None:
    # The first pause alone (at least 5 s) would end past the 1 s allowed.
    budget = RetryBudget(RetryPolicy(retries=5, total_seconds=1.0, first_delay=10.0))
    assert budget.next_delay() is None
    assert budget.used == 0


@pytest.mark.parametrize(
    ("retries", "seconds", "problem"),
    [(-1, 1.0, "retries: -1 is negative"), (1, -1.0, "retry time: -1.0 seconds is negative")],
)
def test_policies_are_checked(retries: int, seconds: float, problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=problem):
        RetryPolicy(retries, seconds)

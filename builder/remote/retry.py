"""How often, and how patiently, a build is sent again when a builder is busy or dies.

A BuildRequest is deterministic, so running it again is safe; a retry that
reaches a builder sharing the first one's store may even be answered from
the result cache. Only refusals that say nothing about the request itself
are retried: a busy builder (RESOURCE_EXHAUSTED) and a lost one (UNAVAILABLE).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from builder.errors import InvalidArgumentError
from builder.executor.cancel import CancelToken


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 4
    """Attempts after the first."""
    total_seconds: float = 300.0
    """No retry starts later than this after the first attempt started."""
    first_delay: float = 0.5
    """Pause before the first retry, in seconds; it doubles each time."""
    max_delay: float = 15.0
    """Longest pause, in seconds: a fleet that is busy for long is asked again at this pace."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InvalidArgumentError(f"retries: {self.retries} is negative")
        if not self.total_seconds >= 0:
            raise InvalidArgumentError(f"retry time: {self.total_seconds} seconds is negative")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (from 1).

        Jittered, so that clients refused together by a busy fleet do not
        come back together.
        """
        ceiling = min(self.max_delay, self.first_delay * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


DEFAULT_RETRY = RetryPolicy()


class RetryBudget:
    """The retries one build has left under a policy, counted from its first attempt."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._deadline = time.monotonic() + policy.total_seconds
        self.used = 0

    def next_delay(self) -> float | None:
        """The pause before the next retry, or None when the retries or the time are spent."""
        if self.used >= self._policy.retries:
            return None
        delay = self._policy.delay(self.used + 1)
        if time.monotonic() + delay > self._deadline:
            return None
        self.used += 1
        return delay


class _Wakeup:
    def __init__(self) -> None:
        self.event = threading.Event()

    def cancel(self) -> None:
        self.event.set()


def pause(seconds: float, cancel: CancelToken | None) -> None:
    """Sleep ``seconds``, or less if ``cancel`` fires meanwhile."""
    if cancel is None:
        time.sleep(seconds)
        return
    wakeup = _Wakeup()
    cancel.attach(wakeup)
    try:
        wakeup.event.wait(seconds)
    finally:
        cancel.detach()

"""Nix's build limits as the client sets them, enforced while a build runs."""

from __future__ import annotations

import threading

import pytest

from builder.executor.cancel import CancelToken
from builder.nixserve.build_result import BuildSettings, BuildStatus
from builder.nixserve.limits import BuildLimits


class _Cancelled:
    def __init__(self) -> None:
        self.event = threading.Event()

    def cancel(self) -> None:
        self.event.set()


@pytest.mark.parametrize("huge", [2**40, 2**63])
def test_a_time_limit_beyond_any_wait_still_leaves_the_log_limit_enforced(
    huge: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout past what a timed wait accepts must not kill the watchdog."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    cancel = CancelToken()
    cancelled = _Cancelled()
    cancel.attach(cancelled)
    settings = BuildSettings(build_timeout=huge, max_silent_time=huge, max_log_size=10)
    with BuildLimits(settings, "building of 'x'", cancel) as limits:
        limits.output(100)
        assert cancelled.event.wait(30)
        assert limits.breach is not None
        assert limits.breach.status is BuildStatus.LOG_LIMIT_EXCEEDED
    assert failures == []

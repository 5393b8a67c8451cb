"""The three per-build limits Nix sends, enforced from outside the executor.

Nix expects its own limits to hold wherever the build runs, so they are
enforced here, identically for the embedded executor and a remote server:
a watchdog thread sleeps until the next deadline (total time, or silence
since the last log output) and cancels the build through its token; the
log sink counts bytes and wakes the watchdog when the log is too long.
Deadlines come from the monotonic clock, so no polling interval decides
when a build ends.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from builder.executor.cancel import CancelToken
from builder.nixserve.build_result import BuildSettings, BuildStatus


@dataclass(frozen=True)
class LimitBreach:
    status: BuildStatus
    message: str


class BuildLimits:
    """Watches one build; ``breach`` tells afterwards which limit ended it, if any."""

    def __init__(self, settings: BuildSettings, goal: str, cancel: CancelToken) -> None:
        self._settings = settings
        self._goal = goal
        self._cancel = cancel
        self._changed = threading.Condition()
        self._started = time.monotonic()
        self._last_output = self._started
        self._logged = 0
        self._stopped = False
        self.breach: LimitBreach | None = None
        self._thread = threading.Thread(target=self._watch, name="build-limits", daemon=True)

    def __enter__(self) -> BuildLimits:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()

    def output(self, size: int) -> bool:
        """Log output arrived: the silence starts again, and the log grew.

        False once the log is over its limit: the rest is not shown, as in Nix.
        """
        with self._changed:
            self._last_output = time.monotonic()
            self._logged += size
            limit = self._settings.max_log_size
            if limit and self._logged > limit and self.breach is None:
                self.breach = LimitBreach(
                    BuildStatus.LOG_LIMIT_EXCEEDED,
                    f"{self._goal} killed after writing more than {limit} bytes of log output",
                )
            self._changed.notify()
            return not (limit and self._logged > limit)

    def _next_breach(self, now: float) -> tuple[LimitBreach | None, float | None]:
        """The limit broken by ``now``, else when the next one would be."""
        deadlines: list[tuple[float, LimitBreach]] = []
        timeout, silence = self._settings.build_timeout, self._settings.max_silent_time
        if timeout:
            deadlines.append(
                (
                    self._started + timeout,
                    LimitBreach(
                        BuildStatus.TIMED_OUT, f"{self._goal} timed out after {timeout} seconds"
                    ),
                )
            )
        if silence:
            deadlines.append(
                (
                    self._last_output + silence,
                    LimitBreach(
                        BuildStatus.TIMED_OUT,
                        f"{self._goal} timed out after {silence} seconds of silence",
                    ),
                )
            )
        if not deadlines:
            return None, None
        when, breach = min(deadlines, key=lambda item: item[0])
        return (breach, None) if now >= when else (None, when - now)

    def _watch(self) -> None:
        with self._changed:
            while not self._stopped and self.breach is None:
                breach, wait = self._next_breach(time.monotonic())
                if breach is not None:
                    self.breach = breach
                    break
                # The client sets the limits: one far beyond any build (or
                # past what a timed wait takes) is a wait without end.
                self._changed.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
            if self._stopped:
                return
        self._cancel.cancel()

"""Cancellation that may arrive before, during or after the sandbox starts."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

from builder.errors import SignalledError


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class CancelToken:
    """Set by whoever gives up on a build (a client hanging up); honoured at every step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._target: Cancellable | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            target = self._target
        if target is not None:
            target.cancel()

    def attach(self, target: Cancellable) -> None:
        """Forward cancellation to a running sandbox; cancels at once if already set."""
        with self._lock:
            self._target = target
            cancelled = self._cancelled
        if cancelled:
            target.cancel()

    def detach(self) -> None:
        with self._lock:
            self._target = None


@contextmanager
def signals_cancel() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``SignalledError`` raised wherever a command waits.

    The exception unwinds through whatever the command holds open, whose
    cleanup stops the build (a remote call is cancelled, a local launcher
    kills its runs), so the build does not run on for nobody and the command
    ends with a message rather than a traceback. Only the main thread may
    install handlers, which is where commands run.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise SignalledError(f"interrupted by {signal.Signals(signum).name}", signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

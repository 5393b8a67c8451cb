"""Cancellation that may arrive before, during or after the sandbox starts."""

from __future__ import annotations

import threading
from typing import Protocol


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

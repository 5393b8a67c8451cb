"""Job slots with a bounded queue in front of them.

A server must say no early rather than pile up work it cannot start: beyond
the queue's length a build is refused with RESOURCE_EXHAUSTED, and a queued
build whose client goes away leaves the queue at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from builder.build.cancel import CancelToken
from builder.errors import CancelledError, ResourceExhaustedError


class JobSlots:
    def __init__(self, slots: int, queue_length: int) -> None:
        if slots < 1:
            raise ValueError("at least one job slot is needed")
        self._free = slots
        self._queue_length = queue_length
        self._waiting = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, cancel: CancelToken) -> Iterator[None]:
        with self._cond:
            if self._free == 0:
                if self._waiting >= self._queue_length:
                    raise ResourceExhaustedError(
                        f"all job slots are busy and {self._waiting} builds are queued "
                        f"(queue length {self._queue_length})"
                    )
                self._waiting += 1
                try:
                    while self._free == 0:
                        if cancel.cancelled:
                            raise CancelledError("build cancelled while queued")
                        self._cond.wait(0.1)
                finally:
                    self._waiting -= 1
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify()

    @property
    def waiting(self) -> int:
        return self._waiting

"""Job slots with a bounded queue in front of them, and admission to both.

A server must say no early rather than pile up work it cannot start: beyond
the queue's length a build is refused with RESOURCE_EXHAUSTED, and a queued
build whose client goes away leaves the queue at once.

Admission is the same bound counted earlier, from the moment a caller turns
up: a server admits a build before doing any work for it (checking inputs,
asking the result cache, waiting for a slot), so that a caller it cannot serve
is refused at once and never holds one of its threads while waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from builder.errors import CancelledError, ResourceExhaustedError
from builder.executor.admission import Admission
from builder.executor.cancel import CancelToken


class JobSlots:
    def __init__(self, slots: int, queue_length: int) -> None:
        if slots < 1:
            raise ValueError("at least one job slot is needed")
        if queue_length < 0:
            raise ValueError("the queue length cannot be negative")
        self._slots = slots
        self._free = slots
        self._queue_length = queue_length
        self._waiting = 0
        self._cond = threading.Condition()
        self._admission = Admission(
            slots + queue_length,
            lambda held: (
                f"this builder is at capacity: {held} builds running or queued "
                f"({slots} job slots, queue length {queue_length}); try again later"
            ),
        )

    @property
    def capacity(self) -> int:
        """How many builds may be admitted at once: one per slot plus the queue."""
        return self._admission.limit

    def admit(self) -> AbstractContextManager[None]:
        """Hold one of ``capacity`` places for a build, or refuse it at once.

        While every build that asks for a slot was admitted first, the queue
        can never overflow: admission is the exact bound.
        """
        return self._admission.hold()

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
            if cancel.cancelled:
                # Cancelled as a slot came free (every queued build cancelled at once,
                # say): the slot goes to a build that will still run.
                raise CancelledError("build cancelled while queued")
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

    @property
    def busy(self) -> int:
        """Slots held now; the rest are free."""
        return self._slots - self._free

    @property
    def admitted(self) -> int:
        return self._admission.held

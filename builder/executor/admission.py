"""An exact bound on how many callers hold something at once, refusing the rest at once.

A sync gRPC server serves each call on one of a fixed number of threads, and a
call that waits (a queued build, a log follower) keeps its thread. Counting
such callers against a bound, and refusing those past it before they wait,
is what lets a server size its threads so that waiting calls never take the
ones other calls need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from builder.errors import ResourceExhaustedError


class Admission:
    def __init__(self, limit: int, refusal: Callable[[int], str]) -> None:
        """``refusal`` words the error for a caller past ``limit``, given the count held."""
        self._limit = limit
        self._refusal = refusal
        self._held = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            if self._held >= self._limit:
                raise ResourceExhaustedError(self._refusal(self._held))
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

"""Used records in a dict, values of any type (``builder.castore.used_records``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from builder.castore.collection import USE_RECORD_INTERVAL

Value = TypeVar("Value")


class MemoryUsedRecords(Generic[Value]):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._values: dict[bytes, Value] = {}
        self._used: dict[bytes, float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Value | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                now = self._clock()
                if now - self._used[key] >= USE_RECORD_INTERVAL:
                    self._used[key] = now
        return value

    def put(self, key: bytes, value: Value) -> None:
        with self._lock:
            self._values[key] = value
            self._used[key] = self._clock()

    def records(self) -> list[tuple[bytes, Value, float]]:
        """A snapshot, so that puts while a caller walks it neither fail nor show half-way."""
        with self._lock:
            return [(key, value, self._used[key]) for key, value in self._values.items()]

    def evict(self, key: bytes, last_used: float) -> bool:
        with self._lock:
            if self._used.get(key, float("inf")) > last_used:
                return False
            del self._values[key], self._used[key]
        return True

    def close(self) -> None:
        with self._lock:
            self._values.clear()
            self._used.clear()

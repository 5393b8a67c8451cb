"""Hits and misses of a cache, counted as lookups happen and read whenever reported."""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable


class HitCounts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses


@runtime_checkable
class NearCacheCounted(Protocol):
    """A near/far service that counts how often its near store had what was read."""

    near_counts: HitCounts

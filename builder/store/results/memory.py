"""Results in a dict: for tests, and for a store whose configuration names no result cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from builder.castore.collection import USE_RECORD_INTERVAL, UsedRoot
from builder.castore.composition import Backend
from builder.proto.tvix.build.protos import build_pb2
from builder.store.results.service import check_key, decode_result, encode_result, result_nodes


class MemoryResultCache:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._results: dict[bytes, bytes] = {}
        self._used: dict[bytes, float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: bytes) -> build_pb2.Build | None:
        check_key(key)
        with self._lock:
            data = self._results.get(key)
            if data is not None:
                now = self._clock()
                if now - self._used[key] >= USE_RECORD_INTERVAL:
                    self._used[key] = now
        return None if data is None else decode_result(data, f"memory result {key.hex()}")

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        data = encode_result(build)
        check_key(key)
        with self._lock:
            self._results[key] = data
            self._used[key] = self._clock()

    def used_roots(self) -> Iterator[UsedRoot]:
        """A snapshot, so that puts while a collector walks neither fail nor show half-way."""
        with self._lock:
            entries = [(key, data, self._used[key]) for key, data in self._results.items()]
        for key, data, used in entries:
            nodes = result_nodes(build_pb2.Build.FromString(data), f"memory result {key.hex()}")
            yield UsedRoot(key, nodes, used)

    def evict(self, root: UsedRoot) -> bool:
        with self._lock:
            if self._used.get(root.key, float("inf")) > root.last_used:
                return False
            del self._results[root.key], self._used[root.key]
        return True

    def close(self) -> None:
        with self._lock:
            self._results.clear()
            self._used.clear()


BACKEND = Backend("resultcache", "memory", lambda params: MemoryResultCache(), schemes=("memory",))

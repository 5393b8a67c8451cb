"""Results in a dict: for tests, and for a store whose configuration names no result cache."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from builder.castore.collection import UsedRoot
from builder.castore.composition import Backend
from builder.castore.used_records.memory import MemoryUsedRecords
from builder.proto.tvix.build.protos import build_pb2
from builder.store.results.service import check_key, decode_result, encode_result, result_nodes


class MemoryResultCache:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock`` dates puts and gets, for eviction by last use."""
        self._records: MemoryUsedRecords[bytes] = MemoryUsedRecords(clock)

    def get(self, key: bytes) -> build_pb2.Build | None:
        data = self._records.get(check_key(key))
        return None if data is None else decode_result(data, f"memory result {key.hex()}")

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        data = encode_result(build)
        self._records.put(check_key(key), data)

    def used_roots(self) -> Iterator[UsedRoot]:
        for key, data, used in self._records.records():
            nodes = result_nodes(build_pb2.Build.FromString(data), f"memory result {key.hex()}")
            yield UsedRoot(key, nodes, used)

    def evict(self, root: UsedRoot) -> bool:
        return self._records.evict(root.key, root.last_used)

    def close(self) -> None:
        self._records.close()


BACKEND = Backend("resultcache", "memory", lambda params: MemoryResultCache(), schemes=("memory",))

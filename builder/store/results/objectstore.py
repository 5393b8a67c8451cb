"""Results in an object store, one object per request digest: the fleet's shared cache.

Each result lives at ``results/<hex request digest>`` as the deterministic
encoding of its ``Build``; a put is one atomic object write, so a reader sees
one whole result. Builders that run the same request at once both write, and
whichever lands last stays: either is a complete build of that request, and
a reader only serves it while its outputs are all in the store.

Last use and eviction follow ``builder.castore.used_records``: the object's
last-modified time, refreshed by writing it again.
"""

from __future__ import annotations

from collections.abc import Iterator

from obstore.store import ObjectStore

from builder.castore.collection import UsedRoot
from builder.castore.composition import Backend, Params
from builder.castore.objectstore_url import (
    OBJECTSTORE_SCHEMES,
    objectstore_location,
    objectstore_url_params,
    open_store,
)
from builder.castore.used_records.objectstore import ObjectStoreUsedRecords
from builder.proto.tvix.build.protos import build_pb2
from builder.store.results.service import (
    KEY_SIZE,
    MAX_RESULT_BYTES,
    check_key,
    decode_result,
    encode_result,
    result_nodes,
)

PREFIX = "results/"


def result_key(key: bytes) -> str:
    return f"{PREFIX}{key.hex()}"


class ObjectStoreResultCache:
    def __init__(self, url: str, options: dict[str, str] | None = None) -> None:
        self.url = url
        self.store: ObjectStore = open_store(url, options)
        self._records = ObjectStoreUsedRecords(self.store, url, PREFIX, KEY_SIZE, MAX_RESULT_BYTES)

    def _where(self, key: bytes) -> str:
        return f"{self.url}: {result_key(key)}"

    def get(self, key: bytes) -> build_pb2.Build | None:
        data = self._records.get(check_key(key))
        return None if data is None else decode_result(data, self._where(key))

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        data = encode_result(build)
        self._records.put(check_key(key), data)

    def used_roots(self) -> Iterator[UsedRoot]:
        """Objects under the prefix whose names are not request digests are someone else's."""
        for key, data, last_used in self._records.records():
            where = self._where(key)
            yield UsedRoot(key, result_nodes(decode_result(data, where), where), last_used)

    def evict(self, root: UsedRoot) -> bool:
        return self._records.evict(root.key, root.last_used)

    def close(self) -> None:
        """obstore clients hold no resources that need releasing."""


def _build(params: Params) -> ObjectStoreResultCache:
    return ObjectStoreResultCache(*objectstore_location(params))


BACKEND = Backend(
    "resultcache", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

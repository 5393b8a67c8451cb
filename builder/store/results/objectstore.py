"""Results in an object store, one object per request digest: the fleet's shared cache.

Each result lives at ``results/<hex request digest>`` as the deterministic
encoding of its ``Build``; a put is one atomic object write, so a reader sees
one whole result. Builders that run the same request at once both write, and
whichever lands last stays: either is a complete build of that request, and
a reader only serves it while its outputs are all in the store.

Last use is the object's last-modified time, which a get of an entry written
longer than ``USE_RECORD_INTERVAL`` ago refreshes by writing it again. A
separate small object would cost a second write and could outlive or lag the
result it dates, letting a collector on another builder drop an entry in use;
one object has no such gap. An eviction checks that time right before it
deletes, which leaves an instant in which a use goes unnoticed (object stores
have no conditional delete); the next build of that request then runs again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import obstore
from obstore.store import ObjectStore

from builder.castore.collection import USE_RECORD_INTERVAL, UsedRoot
from builder.castore.composition import Backend, Params
from builder.castore.objectstore_url import (
    OBJECTSTORE_SCHEMES,
    objectstore_location,
    objectstore_url_params,
    open_store,
    translate_errors,
)
from builder.errors import IntegrityError
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

    def _read(self, name: str) -> tuple[bytes, float] | None:
        """An object's bytes and last-modified time, refusing before reading an oversized one."""
        with translate_errors(f"{self.url}: get {name}"):
            try:
                result = obstore.get(self.store, name)
            except FileNotFoundError:
                return None
            size = result.meta["size"]
            if size > MAX_RESULT_BYTES:
                raise IntegrityError(
                    f"{self.url}: {name} is {size} bytes, more than the {MAX_RESULT_BYTES} allowed"
                )
            data = result.bytes().to_bytes()
        return data, result.meta["last_modified"].timestamp()

    def get(self, key: bytes) -> build_pb2.Build | None:
        name = result_key(check_key(key))
        read = self._read(name)
        if read is None:
            return None
        data, modified = read
        build = decode_result(data, f"{self.url}: {name}")
        if time.time() - modified >= USE_RECORD_INTERVAL:
            with translate_errors(f"{self.url}: put {name}"):
                obstore.put(self.store, name, data)
        return build

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        data = encode_result(build)
        name = result_key(check_key(key))
        with translate_errors(f"{self.url}: put {name}"):
            obstore.put(self.store, name, data)

    def used_roots(self) -> Iterator[UsedRoot]:
        """Objects under the prefix whose names are not request digests are someone else's."""
        with translate_errors(f"{self.url}: list {PREFIX}"):
            for batch in obstore.list(self.store, PREFIX):
                for meta in batch:
                    name = meta["path"]
                    try:
                        key = bytes.fromhex(name.removeprefix(PREFIX))
                    except ValueError:
                        continue
                    if len(key) != KEY_SIZE:
                        continue
                    read = self._read(name)
                    if read is None:
                        continue
                    where = f"{self.url}: {name}"
                    nodes = result_nodes(decode_result(read[0], where), where)
                    yield UsedRoot(key, nodes, read[1])

    def evict(self, root: UsedRoot) -> bool:
        name = result_key(root.key)
        with translate_errors(f"{self.url}: evict {name}"):
            try:
                modified = obstore.head(self.store, name)["last_modified"].timestamp()
            except FileNotFoundError:
                return False
            if modified > root.last_used:
                return False
            obstore.delete(self.store, name)
        return True

    def close(self) -> None:
        """obstore clients hold no resources that need releasing."""


def _build(params: Params) -> ObjectStoreResultCache:
    return ObjectStoreResultCache(*objectstore_location(params))


BACKEND = Backend(
    "resultcache", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

"""Used records as objects under a prefix of an object store (``builder.castore.used_records``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import obstore
from obstore.store import ObjectStore

from builder.castore.collection import USE_RECORD_INTERVAL
from builder.castore.objectstore_url import translate_errors
from builder.errors import IntegrityError


class ObjectStoreUsedRecords:
    """Objects ``<prefix><hex key>``; other names under the prefix are someone else's.

    ``max_bytes`` refuses a larger object before it is read; keys listed must
    be ``key_size`` bytes.
    """

    def __init__(
        self, store: ObjectStore, url: str, prefix: str, key_size: int, max_bytes: int | None
    ) -> None:
        self._store = store
        self._url = url
        self._prefix = prefix
        self._key_size = key_size
        self._max_bytes = max_bytes

    def _name(self, key: bytes) -> str:
        return f"{self._prefix}{key.hex()}"

    def _read(self, name: str) -> tuple[bytes, float] | None:
        """An object's bytes and last-modified time."""
        with translate_errors(f"{self._url}: get {name}"):
            try:
                result = obstore.get(self._store, name)
            except FileNotFoundError:
                return None
            size = result.meta["size"]
            if self._max_bytes is not None and size > self._max_bytes:
                raise IntegrityError(
                    f"{self._url}: {name} is {size} bytes, more than the {self._max_bytes} allowed"
                )
            data = result.bytes().to_bytes()
        return data, result.meta["last_modified"].timestamp()

    def get(self, key: bytes) -> bytes | None:
        name = self._name(key)
        read = self._read(name)
        if read is None:
            return None
        data, modified = read
        if time.time() - modified >= USE_RECORD_INTERVAL:
            self._write(name, data)
        return data

    def put(self, key: bytes, data: bytes) -> None:
        self._write(self._name(key), data)

    def _write(self, name: str, data: bytes) -> None:
        with translate_errors(f"{self._url}: put {name}"):
            obstore.put(self._store, name, data)

    def records(self) -> Iterator[tuple[bytes, bytes, float]]:
        with translate_errors(f"{self._url}: list {self._prefix}"):
            for batch in obstore.list(self._store, self._prefix):
                for meta in batch:
                    name = meta["path"]
                    try:
                        key = bytes.fromhex(name.removeprefix(self._prefix))
                    except ValueError:
                        continue
                    if len(key) != self._key_size:
                        continue
                    read = self._read(name)
                    if read is not None:
                        yield key, *read

    def evict(self, key: bytes, last_used: float) -> bool:
        name = self._name(key)
        with translate_errors(f"{self._url}: evict {name}"):
            try:
                modified = obstore.head(self._store, name)["last_modified"].timestamp()
            except FileNotFoundError:
                return False
            if modified > last_used:
                return False
            obstore.delete(self._store, name)
        return True

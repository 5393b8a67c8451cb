"""PathInfos in an object store, one object per store path.

Each record lives at ``pathinfos/<hex digest>`` as the deterministic tvix
encoding, so listing is one prefix listing and a put is one atomic object
write: a reader sees the old record or the new one, never a mix.

Records are roots for garbage collection (``builder.castore.collection``);
their last use and eviction follow ``builder.castore.used_records``: the
object's last-modified time, refreshed by writing it again.
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
from builder.errors import IntegrityError
from builder.store.path_info import PathInfo
from builder.store.store_path import DIGEST_SIZE, check_digest
from builder.store.wire import decode_path_info, encode_path_info

PREFIX = "pathinfos/"


def pathinfo_key(digest: bytes) -> str:
    return f"{PREFIX}{digest.hex()}"


class ObjectStorePathInfoService:
    def __init__(self, url: str, options: dict[str, str] | None = None) -> None:
        self.url = url
        self.store: ObjectStore = open_store(url, options)
        self._records = ObjectStoreUsedRecords(self.store, url, PREFIX, DIGEST_SIZE, None)

    def get(self, digest: bytes) -> PathInfo | None:
        data = self._records.get(check_digest(digest))
        return None if data is None else self._decode(digest, data)

    def _decode(self, digest: bytes, data: bytes) -> PathInfo:
        key = pathinfo_key(digest)
        info = decode_path_info(data, f"{self.url}: {key}")
        if info.path.digest != digest:
            raise IntegrityError(f"{self.url}: {key} describes {info.path}")
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        self._records.put(info.path.digest, encode_path_info(info))
        return info

    def list(self) -> Iterator[PathInfo]:
        """Objects under the prefix whose names are not digests are someone else's: skipped."""
        for digest, data, _ in self._records.records():
            yield self._decode(digest, data)

    def used_roots(self) -> Iterator[UsedRoot]:
        for digest, data, last_used in self._records.records():
            yield UsedRoot(digest, (self._decode(digest, data).node,), last_used)

    def evict(self, root: UsedRoot) -> bool:
        return self._records.evict(root.key, root.last_used)

    def close(self) -> None:
        """obstore clients hold no resources that need releasing."""


def _build(params: Params) -> ObjectStorePathInfoService:
    return ObjectStorePathInfoService(*objectstore_location(params))


BACKEND = Backend(
    "pathinfo", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

"""PathInfos in an object store, one object per store path.

Each record lives at ``pathinfos/<hex digest>`` as the deterministic tvix
encoding, so listing is one prefix listing and a put is one atomic object
write: a reader sees the old record or the new one, never a mix.

Records are roots for garbage collection (``builder.castore.collection``); an
object's last-modified time is when it was last used, since a get of a record
written longer than ``USE_RECORD_INTERVAL`` ago writes it again. An eviction
checks that time right before it deletes, which leaves an instant in which a
use goes unnoticed (object stores have no conditional delete).
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

    def get(self, digest: bytes) -> PathInfo | None:
        key = pathinfo_key(check_digest(digest))
        with translate_errors(f"{self.url}: get {key}"):
            try:
                result = obstore.get(self.store, key)
            except FileNotFoundError:
                return None
            data = result.bytes().to_bytes()
        info = self._decode(key, digest, data)
        if time.time() - result.meta["last_modified"].timestamp() >= USE_RECORD_INTERVAL:
            with translate_errors(f"{self.url}: put {key}"):
                obstore.put(self.store, key, data)
        return info

    def _decode(self, key: str, digest: bytes, data: bytes) -> PathInfo:
        info = decode_path_info(data, f"{self.url}: {key}")
        if info.path.digest != digest:
            raise IntegrityError(f"{self.url}: {key} describes {info.path}")
        return info

    def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        key = pathinfo_key(info.path.digest)
        with translate_errors(f"{self.url}: put {key}"):
            obstore.put(self.store, key, encode_path_info(info))
        return info

    def list(self) -> Iterator[PathInfo]:
        """Objects under the prefix whose names are not digests are someone else's: skipped."""
        with translate_errors(f"{self.url}: list {PREFIX}"):
            for batch in obstore.list(self.store, PREFIX):
                for meta in batch:
                    key = meta["path"]
                    name = key.removeprefix(PREFIX)
                    try:
                        digest = bytes.fromhex(name)
                    except ValueError:
                        continue
                    if len(digest) != DIGEST_SIZE:
                        continue
                    with translate_errors(f"{self.url}: get {key}"):
                        try:
                            data = obstore.get(self.store, key).bytes().to_bytes()
                        except FileNotFoundError:
                            continue
                    yield self._decode(key, digest, data)

    def used_roots(self) -> Iterator[UsedRoot]:
        with translate_errors(f"{self.url}: list {PREFIX}"):
            for batch in obstore.list(self.store, PREFIX):
                for meta in batch:
                    key = meta["path"]
                    try:
                        digest = bytes.fromhex(key.removeprefix(PREFIX))
                    except ValueError:
                        continue
                    if len(digest) != DIGEST_SIZE:
                        continue
                    with translate_errors(f"{self.url}: get {key}"):
                        try:
                            data = obstore.get(self.store, key).bytes().to_bytes()
                        except FileNotFoundError:
                            continue
                    node = self._decode(key, digest, data).node
                    yield UsedRoot(digest, (node,), meta["last_modified"].timestamp())

    def evict(self, root: UsedRoot) -> bool:
        key = pathinfo_key(root.key)
        with translate_errors(f"{self.url}: evict {key}"):
            try:
                modified = obstore.head(self.store, key)["last_modified"].timestamp()
            except FileNotFoundError:
                return False
            if modified > root.last_used:
                return False
            obstore.delete(self.store, key)
        return True

    def close(self) -> None:
        """obstore clients hold no resources that need releasing."""


def _build(params: Params) -> ObjectStorePathInfoService:
    return ObjectStorePathInfoService(*objectstore_location(params))


BACKEND = Backend(
    "pathinfo", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

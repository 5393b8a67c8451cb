"""PathInfos in an object store, one object per store path.

Each record lives at ``pathinfos/<hex digest>`` as the deterministic tvix
encoding, so listing is one prefix listing and a put is one atomic object
write: a reader sees the old record or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterator

import obstore
from obstore.store import ObjectStore

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
                data = obstore.get(self.store, key).bytes().to_bytes()
            except FileNotFoundError:
                return None
        return self._decode(key, digest, data)

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

    def close(self) -> None:
        """obstore clients hold no resources that need releasing."""


def _build(params: Params) -> ObjectStorePathInfoService:
    return ObjectStorePathInfoService(*objectstore_location(params))


BACKEND = Backend(
    "pathinfo", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

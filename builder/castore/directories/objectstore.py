"""Directories in an object store, one object per directory.

Each directory lives at ``directories/<hex[:4]>/<hex>`` as its canonical
encoding, the very bytes its digest is taken over, so a fetched object can be
checked without trusting the store. A closure is written leaves first: a
directory is visible only after every child it names, and a put that fails
half-way leaves only complete sub-closures behind.

Collection goes by the objects' last-modified times (a put writes the object
again, which touches it); the removal epoch is the object
``directory-removal-epoch``, replaced after each collection that removed
something. Object stores have no conditional delete: a put of the same
directory in the instant between a collector's check and its delete is lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import obstore
from google.protobuf.message import DecodeError
from obstore.store import ObjectStore

from builder.castore.collection import StoredObject, new_epoch
from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting, dated_closure
from builder.castore.directory import Directory
from builder.castore.objectstore_url import (
    OBJECTSTORE_SCHEMES,
    objectstore_location,
    objectstore_url_params,
    open_store,
    translate_errors,
)
from builder.castore.wire import decode_directory
from builder.errors import BuilderError, IntegrityError, InvalidArgumentError

_PUT_THREADS = 8
EPOCH_KEY = "directory-removal-epoch"


def directory_key(digest: Digest) -> str:
    hexdigest = digest.hex()
    return f"directories/{hexdigest[:4]}/{hexdigest}"


class ObjectStoreDirectoryService(ClosureCommitting):
    def __init__(self, url: str, options: dict[str, str] | None = None) -> None:
        self.url = url
        self.store: ObjectStore = open_store(url, options)
        self._executor = ThreadPoolExecutor(_PUT_THREADS, thread_name_prefix="directory-put")

    def get(self, digest: Digest) -> Directory | None:
        key = directory_key(digest)
        with translate_errors(f"{self.url}: get {key}"):
            try:
                data = obstore.get(self.store, key).bytes().to_bytes()
            except FileNotFoundError:
                return None
        if Digest.of(data) != digest:
            raise IntegrityError(f"directory {digest}: stored bytes hash to another digest")
        try:
            return decode_directory(data)
        except (BuilderError, DecodeError) as exc:
            raise IntegrityError(f"directory {digest}: stored bytes do not decode: {exc}") from exc

    def _commit(self, directories: list[Directory], named: list[Digest]) -> None:
        """Write level by level, each level in parallel, leaves first.

        The stored directories the closure names are written again first,
        their closures with them, which is how an object is dated here. A
        directory's level is one more than its deepest child in the batch,
        so when a level starts every child of it is already stored.
        """

        def date(digest: Digest) -> Directory | None:
            found = self.get(digest)
            if found is not None:
                self._put_one(found)
            return found

        dated_closure(date, named)
        levels: dict[Digest, int] = {}
        batches: list[list[Directory]] = []
        for directory in directories:
            level = 1 + max((levels.get(c.digest, -1) for c in directory.directories), default=-1)
            levels[directory.digest] = level
            if level == len(batches):
                batches.append([])
            batches[level].append(directory)
        for batch in batches:
            list(self._executor.map(self._put_one, batch))

    def _put_one(self, directory: Directory) -> None:
        key = directory_key(directory.digest)
        with translate_errors(f"{self.url}: put {key}"):
            obstore.put(self.store, key, directory.encoded)

    def removal_epoch(self) -> int:
        with translate_errors(f"{self.url}: get {EPOCH_KEY}"):
            try:
                return int(obstore.get(self.store, EPOCH_KEY).bytes().to_bytes())
            except FileNotFoundError:
                return 0

    def stored(self) -> Iterator[StoredObject]:
        with translate_errors(f"{self.url}: list directories/"):
            for batch in obstore.list(self.store, "directories/"):
                for meta in batch:
                    try:
                        digest = Digest(bytes.fromhex(meta["path"].rpartition("/")[2]))
                    except (ValueError, InvalidArgumentError):
                        continue
                    yield StoredObject(digest, meta["size"], meta["last_modified"].timestamp())

    def remove_orphans(self, before: float) -> int:
        """Nothing is kept beside the objects."""
        return 0

    def remove_untouched(self, digests: Sequence[Digest], before: float) -> list[StoredObject]:
        removed: list[StoredObject] = []
        try:
            for digest in digests:
                key = directory_key(digest)
                with translate_errors(f"{self.url}: remove {key}"):
                    try:
                        meta = obstore.head(self.store, key)
                    except FileNotFoundError:
                        continue
                    modified = meta["last_modified"].timestamp()
                    if modified >= before:
                        continue
                    obstore.delete(self.store, key)
                removed.append(StoredObject(digest, meta["size"], modified))
        finally:
            if removed:
                with translate_errors(f"{self.url}: put {EPOCH_KEY}"):
                    obstore.put(self.store, EPOCH_KEY, str(new_epoch()).encode())
        return removed

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _build(params: Params) -> ObjectStoreDirectoryService:
    return ObjectStoreDirectoryService(*objectstore_location(params))


BACKEND = Backend(
    "directory", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

"""Directories in an object store, one object per directory.

Each directory lives at ``directories/<hex[:4]>/<hex>`` as its canonical
encoding, the very bytes its digest is taken over, so a fetched object can be
checked without trusting the store. A closure is written leaves first: a
directory is visible only after every child it names, and a put that fails
half-way leaves only complete sub-closures behind.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import obstore
from google.protobuf.message import DecodeError
from obstore.store import ObjectStore

from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.castore.directories.closure import ClosureCommitting
from builder.castore.directory import Directory
from builder.castore.objectstore_url import (
    OBJECTSTORE_SCHEMES,
    objectstore_location,
    objectstore_url_params,
    open_store,
    translate_errors,
)
from builder.castore.wire import decode_directory
from builder.errors import BuilderError, IntegrityError

_PUT_THREADS = 8


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

    def _commit(self, directories: list[Directory]) -> None:
        """Write level by level, each level in parallel, leaves first.

        A directory's level is one more than its deepest child in the batch,
        so when a level starts every child of it is already stored.
        """
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

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _build(params: Params) -> ObjectStoreDirectoryService:
    return ObjectStoreDirectoryService(*objectstore_location(params))


BACKEND = Backend(
    "directory", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

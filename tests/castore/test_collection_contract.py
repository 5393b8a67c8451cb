"""The collection contract every local blob and directory backend honours.

Composite backends (combined, cache) and the gRPC ones are not collectable:
a collection runs where the store is, on the backends that hold the data.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import obstore

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.objectstore import ObjectStoreBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.collection import Collectable, StoredObject
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.directory import Directory
from builder.castore.nodes import DirectoryNode, FileNode
from tests.blob_bytes import put_bytes, read_all
from tests.waiting import wait_for

NOT_COLLECTABLE = {
    "CombinedBlobService",
    "CacheDirectoryService",
    "GrpcBlobService",
    "GrpcDirectoryService",
}


def _collectable(service: object) -> Collectable | None:
    if isinstance(service, Collectable):
        return service
    assert type(service).__name__ in NOT_COLLECTABLE
    return None


def _touched(service: Collectable, digest: Digest) -> StoredObject:
    (found,) = [o for o in service.stored() if o.digest == digest]
    return found


def _later_than(moment: float) -> float:
    """A cut-off after ``moment`` that what is put from now on is dated after.

    S3 dates objects to the whole second, so the clock must have passed the
    second after the cut-off.
    """
    wait_for(lambda: time.time() >= moment + 2, what="the clock to pass two seconds")
    return moment + 1


def test_blobs_are_listed_and_removed_by_age(blob_service: BlobService) -> None:
    service = _collectable(blob_service)
    if service is None:
        return
    started = time.time() - 1
    kept = put_bytes(blob_service, b"kept" * 1000)
    doomed = put_bytes(blob_service, b"doomed" * 1000)
    listed = {o.digest: o for o in service.stored()}
    assert listed[kept].size == 4000 and listed[doomed].size == 6000
    assert listed[doomed].touched >= started
    epoch = service.removal_epoch()

    assert service.remove_untouched([doomed], before=listed[doomed].touched) == []
    assert blob_service.has(doomed)
    assert service.removal_epoch() == epoch

    before = _later_than(max(listed[kept].touched, listed[doomed].touched))
    removed = service.remove_untouched([doomed], before=before)
    assert [(o.digest, o.size) for o in removed] == [(doomed, 6000)]
    # An object store's chunk of a one-chunk blob can be read by the same digest until it goes.
    service.remove_orphans(before)
    assert not blob_service.has(doomed)
    assert blob_service.open_read(doomed) is None
    assert service.removal_epoch() != epoch
    assert read_all(blob_service, kept) == b"kept" * 1000
    assert {o.digest for o in service.stored()} == {kept}
    assert service.remove_untouched([doomed], before=before) == []


def test_putting_a_stored_blob_again_touches_it(blob_service: BlobService) -> None:
    service = _collectable(blob_service)
    if service is None:
        return
    digest = put_bytes(blob_service, b"uploaded twice")
    before = _later_than(_touched(service, digest).touched)
    assert put_bytes(blob_service, b"uploaded twice") == digest
    assert _touched(service, digest).touched >= before
    assert service.remove_untouched([digest], before=before) == []
    assert read_all(blob_service, digest) == b"uploaded twice"


LEAF = Directory(files=(FileNode(b"f", Digest.of(b"x"), 1),))
PARENT = Directory(directories=(DirectoryNode(b"leaf", LEAF.digest, LEAF.size),))


def test_directories_are_listed_and_removed_by_age(directory_service: DirectoryService) -> None:
    service = _collectable(directory_service)
    if service is None:
        return
    putter = directory_service.put_multiple_start()
    putter.put(LEAF)
    putter.put(PARENT)
    putter.close()
    listed = {o.digest: o for o in service.stored()}
    assert listed[LEAF.digest].size == len(LEAF.encoded)
    assert listed[PARENT.digest].size == len(PARENT.encoded)
    epoch = service.removal_epoch()
    assert service.remove_untouched([PARENT.digest], before=listed[PARENT.digest].touched) == []
    assert service.removal_epoch() == epoch

    before = _later_than(max(o.touched for o in listed.values()))
    removed = service.remove_untouched([PARENT.digest], before=before)
    assert [o.digest for o in removed] == [PARENT.digest]
    assert directory_service.get(PARENT.digest) is None
    assert directory_service.get(LEAF.digest) == LEAF
    assert service.removal_epoch() != epoch


def test_putting_a_stored_directory_again_touches_it(directory_service: DirectoryService) -> None:
    service = _collectable(directory_service)
    if service is None:
        return
    directory_service.put(LEAF)
    before = _later_than(_touched(service, LEAF.digest).touched)
    directory_service.put(LEAF)
    assert service.remove_untouched([LEAF.digest], before=before) == []
    assert directory_service.get(LEAF.digest) == LEAF


def test_sqlite_directories_of_an_older_database_are_dated_at_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE directories (digest BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL) "
            "WITHOUT ROWID"
        )
        conn.execute("INSERT INTO directories VALUES (?, ?)", (bytes(LEAF.digest), LEAF.encoded))
    conn.close()
    service = SqliteDirectoryService(path, clock=lambda: 1000.0)
    try:
        assert list(service.stored()) == [StoredObject(LEAF.digest, len(LEAF.encoded), 1000.0)]
        assert service.get(LEAF.digest) == LEAF
        assert service.remove_untouched([LEAF.digest], before=1000.0) == []
        assert [o.digest for o in service.remove_untouched([LEAF.digest], 1001.0)] == [LEAF.digest]
    finally:
        service.close()
    reopened = SqliteDirectoryService(path)
    try:
        assert list(reopened.stored()) == []
    finally:
        reopened.close()


def test_object_store_chunks_go_with_the_last_blob_naming_them(tmp_path: Path) -> None:
    service = ObjectStoreBlobService((tmp_path / "os").as_uri(), avg_chunk_size=1024)
    try:
        shared = bytes(range(256)) * 64
        first = put_bytes(service, shared + b"first" * 3000)
        second = put_bytes(service, shared + b"second" * 3000)
        assert len(service.chunks(first) or []) > 2

        def chunk_keys() -> set[str]:
            return {m["path"] for batch in obstore.list(service.store, "chunks/") for m in batch}

        all_chunks = chunk_keys()
        before = _later_than(max(o.touched for o in service.stored()))
        removed = service.remove_untouched([first], before=before)
        assert [o.digest for o in removed] == [first]
        assert chunk_keys() == all_chunks
        epoch = service.removal_epoch()
        assert service.remove_orphans(before) > 0
        assert service.removal_epoch() != epoch
        assert chunk_keys() < all_chunks
        assert read_all(service, second) == shared + b"second" * 3000
        service.remove_untouched([second], before=before)
        assert service.remove_orphans(before) > 0
        assert chunk_keys() == set()
        assert service.remove_orphans(before) == 0
    finally:
        service.close()


def _remove_at(
    start: threading.Barrier, service: FsBlobService, digest: Digest, cutoff: float
) -> None:
    start.wait()
    service.remove_untouched([digest], before=cutoff)


def test_an_fs_blob_put_again_while_a_collection_removes_it_is_kept(tmp_path: Path) -> None:
    """Whichever of the put's touch and the collector's rename comes first, the put holds."""
    service = FsBlobService(tmp_path / "blobs")
    try:
        digest = put_bytes(service, b"contested")
        for _ in range(100):
            cutoff = time.time() - 10
            os.utime(service.local_path(digest), (cutoff - 10, cutoff - 10))
            start = threading.Barrier(2)
            collector = threading.Thread(target=_remove_at, args=(start, service, digest, cutoff))
            collector.start()
            start.wait()
            put_bytes(service, b"contested")
            collector.join()
            assert read_all(service, digest) == b"contested"
    finally:
        service.close()

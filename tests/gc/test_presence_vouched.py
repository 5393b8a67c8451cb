"""A client told a blob is stored skips its upload, so the answer dates the blob like a put.

A real castore server on a unix socket over an fs blob store: a blob dated
long ago, then asked about by Stat or FindMissingBlobs, is no longer older
than a collection's cut-off taken before the question.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.server.castore_server import create_castore_server
from tests.blob_bytes import put_bytes, read_all


def _stat(client: GrpcBlobService, digest: Digest) -> None:
    assert client.has(digest)


def _find_missing(client: GrpcBlobService, digest: Digest) -> None:
    assert client.missing([digest]) == []


QUESTIONS: dict[str, Callable[[GrpcBlobService, Digest], None]] = {
    "stat": _stat,
    "find-missing": _find_missing,
}


@pytest.mark.parametrize("question", sorted(QUESTIONS))
def test_a_blob_a_client_is_told_is_stored_outlives_a_racing_collection(
    tmp_path: Path, question: str
) -> None:
    blobs = FsBlobService(tmp_path / "blobs")
    bound = create_castore_server(
        blobs, MemoryDirectoryService(), [f"grpc+unix://{tmp_path / 'castore.sock'}"]
    )
    bound.server.start()
    client = GrpcBlobService(bound.addresses[0])
    try:
        digest = put_bytes(blobs, b"found, so not uploaded again")
        cutoff = time.time() - 10
        os.utime(blobs.local_path(digest), (cutoff - 10, cutoff - 10))
        QUESTIONS[question](client, digest)
        assert blobs.remove_untouched([digest], before=cutoff) == []
        assert read_all(blobs, digest) == b"found, so not uploaded again"
    finally:
        client.close()
        bound.server.stop(None).wait()
        blobs.close()

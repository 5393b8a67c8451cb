"""The checks and work behind the batched blob calls, on every blob backend, without a server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.castore.blobs.batches import (
    MAX_BATCH_BLOBS,
    MAX_BATCH_BYTES,
    MAX_FIND_DIGESTS,
    find_missing,
    put_batch,
    read_batch,
)
from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError, ResourceExhaustedError


def _blob(n: int, size: int = 300) -> tuple[Digest, bytes]:
    data = n.to_bytes(4, "little") + os.urandom(size - 4)
    return Digest.of(data), data


def test_put_then_find_and_read(blob_service: BlobService) -> None:
    stored = [_blob(n) for n in range(20)]
    absent = [_blob(100 + n)[0] for n in range(3)]
    put_batch(blob_service, stored)
    asked = [absent[0], stored[0][0], absent[1], stored[5][0], absent[2]]
    assert find_missing(blob_service, asked) == absent
    found, missing = read_batch(blob_service, asked)
    assert found == [stored[0], stored[5]]
    assert missing == absent


def test_a_wrong_digest_stores_nothing_of_the_batch(blob_service: BlobService) -> None:
    good = [_blob(n) for n in range(3)]
    wrong = (_blob(7)[0], _blob(8)[1])
    with pytest.raises(InvalidArgumentError, match=r"blobs\[2\]\.digest: claims"):
        put_batch(blob_service, [*good[:2], wrong, good[2]])
    assert not any(blob_service.has(digest) for digest, _ in [*good, wrong])


def test_a_malformed_digest_names_its_field(blob_service: BlobService) -> None:
    with pytest.raises(InvalidArgumentError, match=r"digests\[1\]"):
        find_missing(blob_service, [_blob(1)[0], b"short"])


def test_counts_and_bytes_are_bounded_before_any_work(blob_service: BlobService) -> None:
    digest = _blob(1)[0]
    with pytest.raises(ResourceExhaustedError, match="digests: 20001 entries"):
        find_missing(blob_service, [digest] * (MAX_FIND_DIGESTS + 1))
    with pytest.raises(ResourceExhaustedError, match="digests: 2001 entries"):
        read_batch(blob_service, [digest] * (MAX_BATCH_BLOBS + 1))
    with pytest.raises(ResourceExhaustedError, match="blobs: 2001 entries"):
        put_batch(blob_service, [_blob(1)] * (MAX_BATCH_BLOBS + 1))
    big = os.urandom(MAX_BATCH_BYTES // 2 + 1)
    with pytest.raises(ResourceExhaustedError, match="more than the limit of"):
        put_batch(blob_service, [(Digest.of(big), big), (Digest.of(big), big)])
    assert not blob_service.has(Digest.of(big))


def test_a_read_over_the_byte_bound_is_refused(blob_service: BlobService) -> None:
    big = [_blob(n, MAX_BATCH_BYTES // 3) for n in range(4)]
    for blob in big:
        put_batch(blob_service, [blob])
    found, _ = read_batch(blob_service, [digest for digest, _ in big[:2]])
    assert found == big[:2]
    with pytest.raises(ResourceExhaustedError, match="read larger blobs on their own"):
        read_batch(blob_service, [digest for digest, _ in big])


def test_a_batch_repairs_a_corrupt_stored_blob(tmp_path: Path) -> None:
    """The fs store's one-commit path keeps a matching blob and replaces a rotten one."""
    blobs = FsBlobService(tmp_path / "blobs")
    kept, rotten = _blob(1), _blob(2)
    put_batch(blobs, [kept, rotten])
    path = Path(blobs.local_path(rotten[0]))
    path.chmod(0o644)
    path.write_bytes(b"rotten" + rotten[1][6:])
    put_batch(blobs, [kept, rotten])
    for digest, data in (kept, rotten):
        reader = blobs.open_read(digest)
        assert reader is not None
        with reader:
            assert reader.read() == data
    assert not any((tmp_path / "blobs" / "tmp").rglob("put-*"))

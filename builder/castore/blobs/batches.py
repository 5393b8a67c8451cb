"""Many small blobs per call: what the batched blob calls check and do, over any BlobService.

A tree of small files costs one round trip and one durable commit per blob
when each blob travels alone; here a call carries many. Every call is bounded
in count and bytes before any work is planned, every blob put is checked
against its claimed digest before any is stored, and a batch is stored whole
or not at all (in one durable commit where the backend offers that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO, Protocol, runtime_checkable

from builder.castore.blobs.service import (
    BatchBlobWriter,
    BlobService,
    BlobWriter,
    VerifiedBlobPut,
)
from builder.castore.collection import presence_vouched
from builder.castore.digest import Digest
from builder.errors import BuilderError, InvalidArgumentError, ResourceExhaustedError

MAX_FIND_DIGESTS = 20_000
"""Digests one FindMissingBlobs may ask about: 640 KiB of digests, answered by local stats."""

MAX_BATCH_BLOBS = 2_000
"""Blobs one BatchPutBlobs or BatchReadBlobs may carry."""

MAX_BATCH_BYTES = 4 << 20
"""Blob bytes one batch may carry, so a call's message stays far below the message limit."""

SMALL_BLOB_SIZE = 256 << 10
"""Blobs up to this size travel in batches; larger ones are streamed on their own."""


@runtime_checkable
class BlobBatching(Protocol):
    """A blob service that answers for many small blobs at once, cheaper than one by one."""

    def missing(self, digests: Sequence[Digest]) -> list[Digest]:
        """The given digests this service has no blob for, in their order."""
        ...

    def put_small(self, blobs: Sequence[tuple[Digest, bytes]]) -> None:
        """Store small blobs, each checked against its digest; none if any fails."""
        ...

    def read_small(self, digests: Sequence[tuple[Digest, int]]) -> dict[Digest, bytes]:
        """The contents of small blobs of known size; those it lacks are left out."""
        ...


def _check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise ResourceExhaustedError(f"{field}: {count} entries, more than the limit of {limit}")


def _digests(raw: Sequence[bytes], limit: int) -> list[Digest]:
    """Digests from a request field, counted before any is converted."""
    _check_count(len(raw), limit, "digests")
    return [Digest.from_field(value, f"digests[{i}]") for i, value in enumerate(raw)]


def find_missing(blobs: BlobService, raw_digests: Sequence[bytes]) -> list[Digest]:
    """The digests ``blobs`` lacks; those it has are dated now, since the client skips them."""
    present = presence_vouched(blobs)
    return [digest for digest in _digests(raw_digests, MAX_FIND_DIGESTS) if not present(digest)]


def checked_put_batch(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[Digest, bytes]]:
    """Refuse a batch over its bounds, or one whose data does not hash to the digest claimed."""
    _check_count(len(raw), MAX_BATCH_BLOBS, "blobs")
    total = sum(len(data) for _, data in raw)
    if total > MAX_BATCH_BYTES:
        raise ResourceExhaustedError(
            f"blobs: {total} bytes of data, more than the limit of {MAX_BATCH_BYTES}"
        )
    batch = []
    for index, (value, data) in enumerate(raw):
        digest = Digest.from_field(value, f"blobs[{index}].digest")
        actual = Digest.of(data)
        if actual != digest:
            raise InvalidArgumentError(
                f"blobs[{index}].digest: claims {digest}, but the data hashes to {actual}"
            )
        batch.append((digest, data))
    return batch


def put_batch(blobs: BlobService, raw: Sequence[tuple[bytes, bytes]]) -> None:
    """Store a checked batch; with a batching backend its blobs become durable in one commit."""
    batch = checked_put_batch(raw)
    if isinstance(blobs, VerifiedBlobPut):
        blobs.put_verified(batch)
    elif isinstance(blobs, BatchBlobWriter):
        with blobs.write_batch() as open_write:
            write_each(open_write, batch)
    else:
        write_each(blobs.open_write, batch)


def write_each(
    open_write: Callable[[], BlobWriter],
    blobs: Iterable[tuple[Digest, bytes]],
    mismatch: type[BuilderError] = InvalidArgumentError,
) -> None:
    """Write each blob whole; bytes that do not hash to their digest raise ``mismatch``.

    A client's batch with wrong bytes is its mistake; a copy of wrong bytes
    from another store is that store's damage, so callers choose the error.
    """
    for digest, data in blobs:
        writer = open_write()
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        stored = writer.close()
        if stored != digest:
            raise mismatch(f"blob {digest} was stored as {stored}: wrong bytes")


def read_batch(
    blobs: BlobService, raw_digests: Sequence[bytes]
) -> tuple[list[tuple[Digest, bytes]], list[Digest]]:
    """The blobs found and the digests not found; never more than ``MAX_BATCH_BYTES`` read."""
    digests = _digests(raw_digests, MAX_BATCH_BLOBS)
    found: list[tuple[Digest, bytes]] = []
    missing: list[Digest] = []
    budget = MAX_BATCH_BYTES
    for digest in digests:
        reader = blobs.open_read(digest)
        if reader is None:
            missing.append(digest)
            continue
        with reader:
            data = read_at_most(reader, budget + 1)
        if len(data) > budget:
            raise ResourceExhaustedError(
                f"digests: the blobs asked for hold more than {MAX_BATCH_BYTES} bytes; "
                f"read larger blobs on their own"
            )
        budget -= len(data)
        found.append((digest, data))
    return found, missing


def read_at_most(reader: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes, reading on to the end so a verifying reader checks the digest."""
    data = bytearray()
    while len(data) < limit and (piece := reader.read(limit - len(data))):
        data += piece
    return bytes(data)

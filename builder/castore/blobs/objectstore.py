"""Blobs in an object store (S3, a local directory, memory), chunked by content.

Layout, under the store's prefix:

- ``chunks/<hex[:4]>/<hex>``: one content-defined chunk, named by the BLAKE3
  of its bytes. Identical chunks of different blobs are stored once.
- ``blobs/<hex[:4]>/<hex>``: a blob's index, the protobuf ``StatBlobResponse``
  listing its chunks in order. It is written after every chunk it names, so a
  blob is visible exactly when it is complete. The empty blob has an index
  with no chunks.

- ``removal-epoch``: the removal epoch, replaced after each collection that
  removed something (``builder.castore.removal``).

Collection goes by the objects' last-modified times. A put of a blob already
stored writes its index again, which touches it, and so does telling a
client it is stored (``touch``); a writer reuses an existing
chunk only if the chunk was written within ``CHUNK_REUSE_AGE`` and otherwise
writes it again, so a chunk a new index names is never older than that when
the upload began. A chunk goes once no index names it and it is older than
the collection's cut-off. Object stores have no conditional delete: a put of
the same blob in the instant between a collector's check of its index and the
delete is lost (its chunks stay and a later put reuses them).

Chunk boundaries come from FastCDC with an average of 256 KiB (minimum half,
maximum double that), so an edit inside a large file changes only the chunks
around it and re-uploads little.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from typing import BinaryIO

import blake3
import obstore
from fastcdc import fastcdc
from google.protobuf.message import DecodeError
from obstore.store import ObjectStore

from builder.castore.blobs.reader import SizedBlobReader
from builder.castore.blobs.service import ChunkMeta
from builder.castore.blobs.writer import HashingBlobWriter
from builder.castore.collection import StoredObject, new_epoch
from builder.castore.composition import Backend, Params
from builder.castore.digest import Digest
from builder.castore.objectstore_url import (
    OBJECTSTORE_SCHEMES,
    objectstore_location,
    objectstore_url_params,
    open_store,
    translate_errors,
)
from builder.errors import BuilderError, IntegrityError, InvalidArgumentError
from builder.proto.tvix.castore.protos.rpc_blobstore_pb2 import StatBlobResponse

logger = logging.getLogger(__name__)

DEFAULT_AVG_CHUNK_SIZE = 256 * 1024

CHUNK_REUSE_AGE = 600.0
"""Seconds: an existing chunk older than this is written again rather than reused."""

EPOCH_KEY = "removal-epoch"

# fastcdc rejects a maximum below 1 KiB; above a 64 MiB average, the chunks
# (up to twice that) every reader and writer holds would no longer be small.
_MIN_AVG_CHUNK_SIZE = 512
_MAX_AVG_CHUNK_SIZE = 64 << 20

# Chunk uploads one writer may have in flight: enough to hide S3 latency,
# few enough that a writer's memory stays a handful of chunks.
_UPLOADS_IN_FLIGHT = 4
_UPLOAD_THREADS = 8


def _check_avg_chunk_size(avg_size: int) -> None:
    if not _MIN_AVG_CHUNK_SIZE <= avg_size <= _MAX_AVG_CHUNK_SIZE:
        raise InvalidArgumentError(
            f"average chunk size {avg_size} is outside "
            f"[{_MIN_AVG_CHUNK_SIZE}, {_MAX_AVG_CHUNK_SIZE}]"
        )


def chunk_key(digest: Digest) -> str:
    hexdigest = digest.hex()
    return f"chunks/{hexdigest[:4]}/{hexdigest}"


def index_key(digest: Digest) -> str:
    hexdigest = digest.hex()
    return f"blobs/{hexdigest[:4]}/{hexdigest}"


def _digest_of_key(key: str) -> Digest | None:
    """The digest an object under ``blobs/`` or ``chunks/`` is named by; None for others."""
    try:
        return Digest(bytes.fromhex(key.rpartition("/")[2]))
    except (ValueError, InvalidArgumentError):
        return None


class StreamingChunker:
    """FastCDC over a stream, cutting exactly where chunking it whole would.

    FastCDC decides a chunk's end by looking at most ``max_size`` bytes past
    its start. So once ``max_size`` bytes beyond a chunk's start are buffered
    (or the stream has ended), that chunk is final; everything from the first
    chunk that is not yet final is carried into the next round. The buffer
    therefore never holds more than ``window + max_size`` bytes.
    """

    def __init__(self, avg_size: int = DEFAULT_AVG_CHUNK_SIZE) -> None:
        _check_avg_chunk_size(avg_size)
        self.avg_size = avg_size
        self.min_size = avg_size // 2
        self.max_size = avg_size * 2
        self._window = 4 * self.max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held back for a later cut: below ``window + max_size`` at any time."""
        return len(self._buffer)

    @property
    def bound(self) -> int:
        return self._window + self.max_size

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """The chunks that became final with ``data``."""
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._window):
            self._buffer += view[start : start + self._window]
            if len(self._buffer) >= self._window:
                yield from self._cut(final=False)

    def finish(self) -> Iterator[bytes]:
        """The remaining chunks once the stream has ended."""
        yield from self._cut(final=True)

    def _cut(self, final: bool) -> list[bytes]:
        buffered = len(self._buffer)
        if buffered == 0:
            return []
        cuts = list(fastcdc(self._buffer, self.min_size, self.avg_size, self.max_size))
        out: list[bytes] = []
        consumed = 0
        for cut in cuts:
            if not final and buffered - cut.offset < self.max_size:
                break
            out.append(bytes(self._buffer[cut.offset : cut.offset + cut.length]))
            consumed = cut.offset + cut.length
        del self._buffer[:consumed]
        return out


class _ObjectStoreWriter(HashingBlobWriter):
    """Hashes and chunks as data arrives; uploads chunks while the caller writes.

    ``abort`` (or a failed upload) leaves no index, so the blob stays absent;
    chunks already uploaded remain as orphans. They are harmless (content
    addressed, possibly shared) and a later write of the same data reuses them.
    """

    def __init__(self, service: ObjectStoreBlobService) -> None:
        super().__init__()
        self._service = service
        self._chunker = StreamingChunker(service.avg_chunk_size)
        self._chunks: list[ChunkMeta] = []
        self._sent: set[Digest] = set()
        self._uploads: deque[Future[None]] = deque()

    def _keep(self, data: memoryview) -> None:
        try:
            for chunk in self._chunker.feed(data):
                self._upload(chunk)
        except BaseException:
            self.abort()
            raise

    def _commit(self, digest: Digest) -> None:
        try:
            for chunk in self._chunker.finish():
                self._upload(chunk)
            while self._uploads:
                self._uploads.popleft().result()
            self._service._put_index(digest, self._chunks)
        except BaseException:
            self._discard()
            raise

    def _upload(self, chunk: bytes) -> None:
        digest = Digest.of(chunk)
        self._chunks.append(ChunkMeta(digest, len(chunk)))
        if digest in self._sent:
            return
        self._sent.add(digest)
        while len(self._uploads) >= _UPLOADS_IN_FLIGHT:
            self._uploads.popleft().result()
        service = self._service
        self._uploads.append(service._executor.submit(service._put_chunk, digest, chunk))

    def _discard(self) -> None:
        for upload in self._uploads:
            upload.cancel()
        for upload in self._uploads:
            if not upload.cancelled():
                upload.exception()
        self._uploads.clear()


class _ChunkedReader(SizedBlobReader):
    """A seekable view of a blob that fetches one chunk at a time, on demand.

    Every chunk is checked against its digest when fetched. A read that goes
    through the blob from start to end is also checked against the blob's
    digest, which catches an index naming the wrong chunks.
    """

    def __init__(self, service: ObjectStoreBlobService, digest: Digest, chunks: list[ChunkMeta]):
        starts = [0, *accumulate(c.size for c in chunks)]
        super().__init__(digest, starts[-1])
        self._service = service
        self._chunks = chunks
        self._starts = starts
        self._current_index = -1
        self._current = memoryview(b"")
        self._hasher = blake3.blake3()
        self._hashed = 0

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        out = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(out) and self._pos < self._size:
            index = bisect_right(self._starts, self._pos) - 1
            data = self._chunk(index)
            start = self._pos - self._starts[index]
            piece = data[start : start + len(out) - filled]
            out[filled : filled + len(piece)] = piece
            self._observe(piece)
            self._pos += len(piece)
            filled += len(piece)
        return filled

    def close(self) -> None:
        self._current = memoryview(b"")
        self._current_index = -1
        super().close()

    def _chunk(self, index: int) -> memoryview:
        if index != self._current_index:
            self._current = memoryview(b"")
            self._current = self._service._fetch_chunk(self._chunks[index], self._digest)
            self._current_index = index
        return self._current

    def _observe(self, piece: memoryview) -> None:
        if self._hashed != self._pos:
            return
        self._hasher.update(piece)
        self._hashed += len(piece)
        if self._hashed == self._size and self._hasher.digest() != self._digest:
            logger.error(
                "stored blob %s (index %s) does not match its digest",
                self._digest,
                index_key(self._digest),
            )
            raise IntegrityError(f"blob {self._digest}: its chunks hash to a different digest")


def _decode_index(digest: Digest, data: bytes) -> list[ChunkMeta]:
    try:
        message = StatBlobResponse.FromString(data)
        return [ChunkMeta(Digest(c.digest), c.size) for c in message.chunks]
    except (DecodeError, BuilderError) as exc:
        raise IntegrityError(f"blob {digest}: index is corrupt: {exc}") from exc


class ObjectStoreBlobService:
    """A BlobService over any store obstore reaches (``file://``, ``memory://``, ``s3://``).

    ``chunks`` answers ``[]`` for blobs of at most one chunk (and for a digest
    that names a chunk): a one-element list would only repeat the blob itself.
    Larger blobs get their full chunk list, each chunk readable by digest.
    """

    def __init__(
        self,
        url: str,
        options: dict[str, str] | None = None,
        avg_chunk_size: int = DEFAULT_AVG_CHUNK_SIZE,
    ) -> None:
        _check_avg_chunk_size(avg_chunk_size)
        self.url = url
        self.avg_chunk_size = avg_chunk_size
        self.store: ObjectStore = open_store(url, options)
        self._executor = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="blob-upload")

    def has(self, digest: Digest) -> bool:
        return self._exists(index_key(digest)) or self._exists(chunk_key(digest))

    def open_read(self, digest: Digest) -> BinaryIO | None:
        chunks = self._load_index(digest)
        if chunks is None:
            size = self._size_of(chunk_key(digest))
            if size is None:
                return None
            chunks = [ChunkMeta(digest, size)]
        return _ChunkedReader(self, digest, chunks)  # type: ignore[return-value]

    def open_write(self) -> _ObjectStoreWriter:
        return _ObjectStoreWriter(self)

    def chunks(self, digest: Digest) -> list[ChunkMeta] | None:
        chunks = self._load_index(digest)
        if chunks is None:
            return [] if self._exists(chunk_key(digest)) else None
        return chunks if len(chunks) > 1 else []

    def touch(self, digest: Digest) -> bool:
        """Write the index again, as a put of the blob would; whether the blob is stored.

        A digest stored only as a chunk (a one-chunk piece of another blob)
        reads as a blob but no index keeps it: it gets one, and its chunk is
        written again if it is old enough to be collected, as a put would.
        """
        index = self._get(index_key(digest))
        if index is not None:
            self._put(index_key(digest), index.tobytes())
            return True
        size = self._size_of(chunk_key(digest))
        if size is None:
            return False
        chunk = ChunkMeta(digest, size)
        self._put_chunk(digest, self._fetch_chunk(chunk, digest).tobytes())
        self._put_index(digest, [chunk])
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def removal_epoch(self) -> int:
        data = self._get(EPOCH_KEY)
        return 0 if data is None else int(data.tobytes())

    def stored(self) -> Iterator[StoredObject]:
        """Blobs with their whole size, which costs reading every index."""
        for key, _, modified in self._list("blobs/"):
            digest = _digest_of_key(key)
            if digest is None:
                continue
            chunks = self._load_index(digest)
            if chunks is not None:
                yield StoredObject(digest, sum(c.size for c in chunks), modified)

    def remove_untouched(self, digests: Sequence[Digest], before: float) -> list[StoredObject]:
        removed: list[StoredObject] = []
        try:
            for digest in digests:
                key = index_key(digest)
                modified = self._modified(key)
                if modified is None or modified >= before:
                    continue
                chunks = self._load_index(digest) or []
                self._delete(key)
                removed.append(StoredObject(digest, sum(c.size for c in chunks), modified))
        finally:
            if removed:
                self._put(EPOCH_KEY, str(new_epoch()).encode())
        return removed

    def remove_orphans(self, before: float) -> int:
        """Remove chunks no index names that are older than ``before``.

        Candidates are listed before the indexes are read, so an index written
        meanwhile names only chunks reused young or written anew (see the
        module's account of ``CHUNK_REUSE_AGE``). A chunk can be read by its
        digest, so the removal epoch moves too.
        """
        candidates = {
            digest
            for key, _, modified in self._list("chunks/")
            if modified < before and (digest := _digest_of_key(key)) is not None
        }
        if not candidates:
            return 0
        for key, _, _ in self._list("blobs/"):
            digest = _digest_of_key(key)
            for chunk in (None if digest is None else self._load_index(digest)) or []:
                candidates.discard(chunk.digest)
        try:
            for digest in candidates:
                self._delete(chunk_key(digest))
        finally:
            self._put(EPOCH_KEY, str(new_epoch()).encode())
        return len(candidates)

    def _list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        with translate_errors(f"{self.url}: list {prefix}"):
            for batch in obstore.list(self.store, prefix):
                for meta in batch:
                    yield meta["path"], meta["size"], meta["last_modified"].timestamp()

    def _modified(self, key: str) -> float | None:
        with translate_errors(f"{self.url}: head {key}"):
            try:
                return obstore.head(self.store, key)["last_modified"].timestamp()
            except FileNotFoundError:
                return None

    def _delete(self, key: str) -> None:
        with translate_errors(f"{self.url}: delete {key}"):
            obstore.delete(self.store, key)

    def _exists(self, key: str) -> bool:
        return self._size_of(key) is not None

    def _size_of(self, key: str) -> int | None:
        with translate_errors(f"{self.url}: head {key}"):
            try:
                return obstore.head(self.store, key)["size"]
            except FileNotFoundError:
                return None

    def _get(self, key: str) -> memoryview | None:
        with translate_errors(f"{self.url}: get {key}"):
            try:
                return memoryview(obstore.get(self.store, key).bytes())
            except FileNotFoundError:
                return None

    def _put(self, key: str, data: bytes) -> None:
        with translate_errors(f"{self.url}: put {key}"):
            obstore.put(self.store, key, data)

    def _load_index(self, digest: Digest) -> list[ChunkMeta] | None:
        data = self._get(index_key(digest))
        return None if data is None else _decode_index(digest, data.tobytes())

    def _put_index(self, digest: Digest, chunks: list[ChunkMeta]) -> None:
        message = StatBlobResponse(
            chunks=[StatBlobResponse.ChunkMeta(digest=c.digest, size=c.size) for c in chunks]
        )
        self._put(index_key(digest), message.SerializeToString(deterministic=True))

    def _put_chunk(self, digest: Digest, data: bytes) -> None:
        key = chunk_key(digest)
        modified = self._modified(key)
        if modified is None or modified < time.time() - CHUNK_REUSE_AGE:
            self._put(key, data)

    def _fetch_chunk(self, chunk: ChunkMeta, blob: Digest) -> memoryview:
        data = self._get(chunk_key(chunk.digest))
        if data is None:
            raise IntegrityError(f"blob {blob}: chunk {chunk.digest} is missing from the store")
        if len(data) != chunk.size or blake3.blake3(data).digest() != chunk.digest:
            logger.error(
                "stored chunk %s of blob %s at %s does not match its digest or size",
                chunk.digest,
                blob,
                chunk_key(chunk.digest),
            )
            raise IntegrityError(
                f"blob {blob}: chunk {chunk.digest} does not match its digest or size"
            )
        return data


def _build(params: Params) -> ObjectStoreBlobService:
    url, options = objectstore_location(params)
    return ObjectStoreBlobService(
        url, options, avg_chunk_size=params.integer("avg_chunk_size", 256 * 1024)
    )


BACKEND = Backend(
    "blob", "objectstore", _build, OBJECTSTORE_SCHEMES, from_url=objectstore_url_params
)

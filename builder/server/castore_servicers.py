"""BlobService and DirectoryService servicers, written once for both families.

Each servicer only converts messages and delegates to a castore service; the
family decides nothing but which generated message classes are used, so one
instance per family is registered on the same backing store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from builder.castore.blobs import batches
from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.collection import presence_vouched
from builder.castore.digest import Digest
from builder.castore.directories.service import DirectoryService
from builder.castore.grpc.extensions import announces_end_marker, is_end_marker
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.wire import (
    DEFAULT_MAX_DIRECTORY_ENTRIES,
    Family,
    check_entry_count,
    directory_from_proto,
    directory_to_proto,
)
from builder.errors import CancelledError, InvalidArgumentError, NotFoundError
from builder.proto.builder.v1 import blob_batches_pb2 as batches_pb2
from builder.proto.builder.v1 import blob_batches_pb2_grpc as batches_grpc
from builder.server.blob_traffic import BlobTraffic
from builder.server.status import rpc_errors

# Read streams at most this much per message: far below gRPC's 4 MiB default
# limit, so any client accepts it, and large enough to keep per-message
# overhead negligible.
BLOB_CHUNK_SIZE = READ_CHUNK_SIZE

logger = logging.getLogger(__name__)

# A blob stored by a Put of its own is a debug line below this size and an
# info line from it: clients upload trees blob by blob, and a tree of ten
# thousand files must not make ten thousand lines.
LARGE_BLOB = 16 << 20

# How long a finished-looking upload that carries no end marker waits for a
# cancellation still on its way; marked uploads never wait.
CANCEL_GRACE = 0.002


class BlobServicer:
    def __init__(
        self,
        blobs: BlobService,
        family: Family,
        cancel_grace: float = CANCEL_GRACE,
        traffic: BlobTraffic | None = None,
    ) -> None:
        self._blobs = blobs
        self._present = presence_vouched(blobs)
        self._family = family
        self._cancel_grace = cancel_grace
        self._traffic = traffic or BlobTraffic()
        self._messages = castore_rpc(family).blobstore

    def register(self, server: grpc.Server) -> str:
        rpc = castore_rpc(self._family)
        rpc.blobstore_grpc.add_BlobServiceServicer_to_server(self, server)
        return rpc.blobstore.DESCRIPTOR.services_by_name["BlobService"].full_name

    @rpc_errors
    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        digest = Digest.from_field(request.digest, "digest")
        if not request.send_chunks:
            if not self._present(digest):
                raise NotFoundError(f"blob {digest} not found")
            return self._messages.StatBlobResponse()
        chunks = self._blobs.chunks(digest)
        if chunks is None:
            raise NotFoundError(f"blob {digest} not found")
        meta = self._messages.StatBlobResponse.ChunkMeta
        return self._messages.StatBlobResponse(
            chunks=[meta(digest=chunk.digest, size=chunk.size) for chunk in chunks]
        )

    @rpc_errors
    def Read(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        digest = Digest.from_field(request.digest, "digest")
        reader = self._blobs.open_read(digest)
        if reader is None:
            raise NotFoundError(f"blob {digest} not found")
        with reader:
            while data := reader.read(BLOB_CHUNK_SIZE):
                self._traffic.sent(len(data))
                yield self._messages.BlobChunk(data=data)

    @rpc_errors
    def Put(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        writer = self._blobs.open_write()
        marked = False
        size = 0
        try:
            for chunk in request_iterator:
                self._traffic.received(len(chunk.data))
                writer.write(chunk.data)
                size += len(chunk.data)
                marked = not chunk.data
            if not marked:
                _still_wanted(context, self._cancel_grace)
        except BaseException:
            writer.abort()
            raise
        digest = writer.close()
        self._traffic.stored(1)
        logger.log(
            logging.INFO if size >= LARGE_BLOB else logging.DEBUG,
            "blob stored",
            extra={"digest": str(digest), "bytes": size, "peer": context.peer()},
        )
        return self._messages.PutBlobResponse(digest=digest)


class BlobBatchesServicer:
    """Our own batched blob calls over the same store as the castore services."""

    def __init__(self, blobs: BlobService, traffic: BlobTraffic | None = None) -> None:
        self._blobs = blobs
        self._traffic = traffic or BlobTraffic()

    def register(self, server: grpc.Server) -> str:
        batches_grpc.add_BlobBatchesServicer_to_server(self, server)
        return batches_pb2.DESCRIPTOR.services_by_name["BlobBatches"].full_name

    @rpc_errors
    def FindMissingBlobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        missing = batches.find_missing(self._blobs, request.digests)
        return batches_pb2.FindMissingBlobsResponse(missing=missing)

    @rpc_errors
    def BatchPutBlobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._traffic.received(sum(len(blob.data) for blob in request.blobs))
        batches.put_batch(self._blobs, [(blob.digest, blob.data) for blob in request.blobs])
        self._traffic.stored(len(request.blobs))
        logger.info(
            "blob batch stored",
            extra={
                "count": len(request.blobs),
                "bytes": sum(len(blob.data) for blob in request.blobs),
                "peer": context.peer(),
            },
        )
        return batches_pb2.BatchPutBlobsResponse()

    @rpc_errors
    def BatchReadBlobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        found, missing = batches.read_batch(self._blobs, request.digests)
        self._traffic.sent(sum(len(data) for _, data in found))
        blobs = [batches_pb2.Blob(digest=digest, data=data) for digest, data in found]
        return batches_pb2.BatchReadBlobsResponse(blobs=blobs, missing=missing)


class DirectoryServicer:
    def __init__(
        self,
        directories: DirectoryService,
        family: Family,
        max_entries: int = DEFAULT_MAX_DIRECTORY_ENTRIES,
        end_marker: bool = True,
        cancel_grace: float = CANCEL_GRACE,
    ) -> None:
        self._directories = directories
        self._end_marker = end_marker
        self._cancel_grace = cancel_grace
        self._max_entries = max_entries
        self._family = family
        self._messages = castore_rpc(family).directory

    def register(self, server: grpc.Server) -> str:
        rpc = castore_rpc(self._family)
        rpc.directory_grpc.add_DirectoryServiceServicer_to_server(self, server)
        return rpc.directory.DESCRIPTOR.services_by_name["DirectoryService"].full_name

    @rpc_errors
    def Get(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        digest = Digest.from_field(request.digest, "digest")
        if request.recursive:
            for directory in self._directories.get_recursive(digest):
                yield directory_to_proto(directory, self._family)
            return
        directory = self._directories.get(digest)
        if directory is None:
            raise NotFoundError(f"directory {digest} not found")
        yield directory_to_proto(directory, self._family)

    @rpc_errors
    def Put(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """With the end marker announced, each message is put once the next one arrives.

        The last message held back must be the marker; a stream that ends
        otherwise was cut short, and nothing of it is stored.
        """
        marked = self._end_marker and announces_end_marker(context.invocation_metadata())
        putter = self._directories.put_multiple_start()
        held: list[tuple[int, Any]] = []
        count = size = 0
        for item in enumerate(request_iterator):
            held.append(item)
            if len(held) > (1 if marked else 0):
                index, message = held.pop(0)
                try:
                    check_entry_count(message, self._max_entries)
                    directory = directory_from_proto(message)
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"directory #{index}: {exc}") from exc
                putter.put(directory)
                count += 1
                size += message.ByteSize()
        if not marked:
            _still_wanted(context, self._cancel_grace)
        elif not held or not is_end_marker(held[0][1]):
            raise CancelledError("directory upload ended before its end marker")
        root = putter.close()
        logger.info(
            "directories stored",
            extra={
                "root": str(root),
                "count": count,
                "bytes": size,
                "peer": context.peer(),
            },
        )
        return self._messages.PutDirectoryResponse(root_digest=root)


def _still_wanted(context: grpc.ServicerContext, grace: float) -> None:
    """Nothing a client sent without marking its end is stored once it has cancelled.

    gRPC's Python server ends the request iterator the same way for a client
    that half-closed and for one that cancelled (even the core's receive
    event succeeds in both cases); the cancellation arrives as the call's
    close event a moment later. Our own clients end a blob upload with an
    empty chunk, which any castore server takes as zero more bytes, and a
    directory upload with the end marker they announce (see
    ``castore/grpc/extensions.py``); such uploads are stored at once. A
    stream without a marker (from Tvix or Snix clients) is given ``grace``
    (``CANCEL_GRACE`` unless the server was built with another) for its close
    event, and is refused as soon as that event arrives.
    """
    closed = threading.Event()
    if not context.add_callback(closed.set):
        raise CancelledError("upload cancelled by the client")
    if closed.wait(grace) or not context.is_active():
        raise CancelledError("upload cancelled by the client")

"""What only our own servers offer beside the Tvix and Snix castore, and how a client learns it.

A client asks once per channel, with an empty FindMissingBlobs: a Tvix or
Snix server answers UNIMPLEMENTED. A server offering it takes the batched
blob calls and understands a directory upload's end marker.

The end marker exists because the Python gRPC server cannot tell a client
that half-closed from one that cancelled when the request stream ends. A
client announces in its call metadata that it will end a complete directory
upload with ``END_MARKER``, a Directory no valid closure can contain (an
entry without a name); the server then stores the upload only if it ends so,
and never needs to wait for a cancellation to arrive.
"""

from __future__ import annotations

from typing import Any

import grpc

from builder.castore.grpc.status import error_from_rpc, status_code_of
from builder.castore.wire import Family
from builder.proto.builder.v1 import blob_batches_pb2, blob_batches_pb2_grpc

END_MARKER_METADATA = ("builder-directory-end-marker", "1")

END_MARKER = Family.SNIX.castore.Directory(
    symlinks=[Family.SNIX.castore.SymlinkEntry()]
).SerializeToString()
"""A Directory holding one symlink with neither name nor target: invalid, so never a member."""


def offers_extensions(channel: grpc.Channel) -> bool:
    try:
        blob_batches_pb2_grpc.BlobBatchesStub(channel).FindMissingBlobs(
            blob_batches_pb2.FindMissingBlobsRequest()
        )
    except grpc.RpcError as error:
        if status_code_of(error) == grpc.StatusCode.UNIMPLEMENTED:
            return False
        raise error_from_rpc(error) from error
    return True


def end_marker(family: Family) -> Any:
    return family.castore.Directory.FromString(END_MARKER)


def is_end_marker(message: Any) -> bool:
    return bool(message.ByteSize() == len(END_MARKER)) and message.SerializeToString() == END_MARKER


def announces_end_marker(metadata: Any) -> bool:
    return any((key, value) == END_MARKER_METADATA for key, value in metadata or ())

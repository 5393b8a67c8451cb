"""The generated castore modules of each family, resolved in one place."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from builder.castore.wire import Family
from builder.proto.snix.castore.protos import rpc_blobstore_pb2 as snix_blobstore
from builder.proto.snix.castore.protos import rpc_blobstore_pb2_grpc as snix_blobstore_grpc
from builder.proto.snix.castore.protos import rpc_directory_pb2 as snix_directory
from builder.proto.snix.castore.protos import rpc_directory_pb2_grpc as snix_directory_grpc
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2 as tvix_blobstore
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2_grpc as tvix_blobstore_grpc
from builder.proto.tvix.castore.protos import rpc_directory_pb2 as tvix_directory
from builder.proto.tvix.castore.protos import rpc_directory_pb2_grpc as tvix_directory_grpc


@dataclass(frozen=True)
class CastoreRpc:
    """The generated modules of one family's castore services."""

    blobstore: ModuleType
    blobstore_grpc: ModuleType
    directory: ModuleType
    directory_grpc: ModuleType


_RPC = {
    Family.TVIX: CastoreRpc(
        tvix_blobstore, tvix_blobstore_grpc, tvix_directory, tvix_directory_grpc
    ),
    Family.SNIX: CastoreRpc(
        snix_blobstore, snix_blobstore_grpc, snix_directory, snix_directory_grpc
    ),
}


def castore_rpc(family: Family) -> CastoreRpc:
    return _RPC[family]

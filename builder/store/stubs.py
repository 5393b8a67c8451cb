"""The generated store modules of each family, resolved in one place."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from builder.castore.wire import Family
from builder.proto.snix.store.protos import pathinfo_pb2 as snix_pathinfo
from builder.proto.snix.store.protos import rpc_pathinfo_pb2 as snix_rpc_pathinfo
from builder.proto.snix.store.protos import rpc_pathinfo_pb2_grpc as snix_rpc_pathinfo_grpc
from builder.proto.tvix.store.protos import pathinfo_pb2 as tvix_pathinfo
from builder.proto.tvix.store.protos import rpc_pathinfo_pb2 as tvix_rpc_pathinfo
from builder.proto.tvix.store.protos import rpc_pathinfo_pb2_grpc as tvix_rpc_pathinfo_grpc


@dataclass(frozen=True)
class StoreRpc:
    """The generated modules of one family's PathInfo messages and service."""

    pathinfo: ModuleType
    rpc: ModuleType
    rpc_grpc: ModuleType
    node_field: str


_RPC = {
    Family.TVIX: StoreRpc(tvix_pathinfo, tvix_rpc_pathinfo, tvix_rpc_pathinfo_grpc, "node"),
    Family.SNIX: StoreRpc(snix_pathinfo, snix_rpc_pathinfo, snix_rpc_pathinfo_grpc, "entry"),
}


def store_rpc(family: Family) -> StoreRpc:
    return _RPC[family]

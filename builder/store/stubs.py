"""The generated PathInfo service modules of each family, resolved in one place.

Only the gRPC client and servicer need these; the messages alone, which the
durable backends store, are resolved in ``wire.py`` without loading gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from builder.castore.wire import Family
from builder.proto.snix.store.protos import rpc_pathinfo_pb2 as snix_rpc_pathinfo
from builder.proto.snix.store.protos import rpc_pathinfo_pb2_grpc as snix_rpc_pathinfo_grpc
from builder.proto.tvix.store.protos import rpc_pathinfo_pb2 as tvix_rpc_pathinfo
from builder.proto.tvix.store.protos import rpc_pathinfo_pb2_grpc as tvix_rpc_pathinfo_grpc


@dataclass(frozen=True)
class StoreRpc:
    """The generated modules of one family's PathInfo service: its messages and its stubs."""

    rpc: ModuleType
    rpc_grpc: ModuleType


_RPC = {
    Family.TVIX: StoreRpc(tvix_rpc_pathinfo, tvix_rpc_pathinfo_grpc),
    Family.SNIX: StoreRpc(snix_rpc_pathinfo, snix_rpc_pathinfo_grpc),
}


def store_rpc(family: Family) -> StoreRpc:
    return _RPC[family]

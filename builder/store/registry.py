"""Every service type a store configuration can use: the castore's and the PathInfo ones."""

from __future__ import annotations

from builder.castore.composition import Registry
from builder.castore.registry import CASTORE_BACKENDS
from builder.store.pathinfos import grpc as grpc_pathinfos
from builder.store.pathinfos import memory as memory_pathinfos
from builder.store.pathinfos import objectstore as objectstore_pathinfos
from builder.store.pathinfos import sqlite as sqlite_pathinfos

PATHINFO_BACKENDS = tuple(
    module.BACKEND
    for module in (memory_pathinfos, sqlite_pathinfos, objectstore_pathinfos, grpc_pathinfos)
)

DEFAULT_REGISTRY = Registry((*CASTORE_BACKENDS, *PATHINFO_BACKENDS))

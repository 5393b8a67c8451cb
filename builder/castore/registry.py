"""The castore service types, each declared beside its service.

The store layer adds its PathInfo backends to these to make the registry stores
are opened with.
"""

from __future__ import annotations

from builder.castore.blobs import combined as combined_blobs
from builder.castore.blobs import fs as fs_blobs
from builder.castore.blobs import grpc as grpc_blobs
from builder.castore.blobs import memory as memory_blobs
from builder.castore.blobs import objectstore as objectstore_blobs
from builder.castore.composition import Registry
from builder.castore.directories import cache as cache_directories
from builder.castore.directories import grpc as grpc_directories
from builder.castore.directories import memory as memory_directories
from builder.castore.directories import objectstore as objectstore_directories
from builder.castore.directories import sqlite as sqlite_directories

CASTORE_BACKENDS = tuple(
    module.BACKEND
    for module in (
        memory_blobs,
        fs_blobs,
        objectstore_blobs,
        grpc_blobs,
        combined_blobs,
        memory_directories,
        sqlite_directories,
        objectstore_directories,
        grpc_directories,
        cache_directories,
    )
)

CASTORE_REGISTRY = Registry(CASTORE_BACKENDS)

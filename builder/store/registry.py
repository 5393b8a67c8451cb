"""Every service type a store configuration can use: the castore's, PathInfos and results.

Each is named by the module that declares it and imported on first use (see
``Registry``): opening the embedded store loads the fs and SQLite backends only.
"""

from __future__ import annotations

from builder.castore.composition import Registry
from builder.castore.registry import BLOB_BACKEND_MODULES, DIRECTORY_BACKEND_MODULES

PATHINFO_BACKEND_MODULES = (
    "builder.store.pathinfos.memory",
    "builder.store.pathinfos.sqlite",
    "builder.store.pathinfos.objectstore",
    "builder.store.pathinfos.grpc",
)

RESULTCACHE_BACKEND_MODULES = (
    "builder.store.results.memory",
    "builder.store.results.sqlite",
    "builder.store.results.objectstore",
    "builder.store.results.grpc",
)

DEFAULT_REGISTRY = Registry(
    modules={
        "blob": BLOB_BACKEND_MODULES,
        "directory": DIRECTORY_BACKEND_MODULES,
        "pathinfo": PATHINFO_BACKEND_MODULES,
        "resultcache": RESULTCACHE_BACKEND_MODULES,
    }
)

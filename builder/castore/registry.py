"""The castore service types, each declared (as ``BACKEND``) beside its service.

Named by module, so that a registry imports a backend, and what it depends on
(gRPC, an object-store client), only once a configuration asks for its type or
one of its URL schemes. The store layer adds its PathInfo backends to these to
make the registry stores are opened with.
"""

from __future__ import annotations

from builder.castore.composition import Registry

BLOB_BACKEND_MODULES = (
    "builder.castore.blobs.memory",
    "builder.castore.blobs.fs",
    "builder.castore.blobs.objectstore",
    "builder.castore.blobs.grpc",
    "builder.castore.blobs.combined",
)
DIRECTORY_BACKEND_MODULES = (
    "builder.castore.directories.memory",
    "builder.castore.directories.sqlite",
    "builder.castore.directories.objectstore",
    "builder.castore.directories.grpc",
    "builder.castore.directories.cache",
)

CASTORE_REGISTRY = Registry(
    modules={"blob": BLOB_BACKEND_MODULES, "directory": DIRECTORY_BACKEND_MODULES}
)

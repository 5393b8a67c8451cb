"""The built-in service types, each imported only when a configuration uses it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from builder.castore.composition import ConfigError, Params, Registry
from builder.castore.wire import Family

if TYPE_CHECKING:
    from builder.castore.grpc_channel import ChannelSecurity


def _family(params: Params) -> Family:
    return Family(params.string("family", "tvix"))


def _security(params: Params) -> ChannelSecurity:
    """TLS material and a bearer token for a remote store, each read from a file."""
    from builder.castore.grpc_channel import ChannelSecurity

    def read(key: str) -> bytes | None:
        path = params.string(key, "")
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{params.where}: {key} {path!r}: {exc.strerror}") from exc

    token = read("token_file")
    return ChannelSecurity(
        root_certificates=read("tls_ca"),
        client_key=read("tls_key"),
        client_cert=read("tls_cert"),
        token=token.decode().strip() if token is not None else None,
    )


def _memory_blob(params: Params) -> object:
    from builder.castore.blobs.memory import MemoryBlobService

    return MemoryBlobService()


def _fs_blob(params: Params) -> object:
    from builder.castore.blobs.fs import FsBlobService

    return FsBlobService(Path(params.string("path")))


def _objectstore_blob(params: Params) -> object:
    from builder.castore.blobs.objectstore import ObjectStoreBlobService
    from builder.castore.objectstore_url import parse_objectstore_url

    url, options = parse_objectstore_url(params.string("url"))
    options.update(params.mapping("options"))
    return ObjectStoreBlobService(
        url, options, avg_chunk_size=params.integer("avg_chunk_size", 256 * 1024)
    )


def _grpc_blob(params: Params) -> object:
    from builder.castore.blobs.grpc import GrpcBlobService

    return GrpcBlobService(params.string("url"), _family(params), _security(params))


def _combined_blob(params: Params) -> object:
    from builder.castore.blobs.combined import CombinedBlobService

    return CombinedBlobService(params.blob("near"), params.blob("far"))


def _memory_directory(params: Params) -> object:
    from builder.castore.directories.memory import MemoryDirectoryService

    return MemoryDirectoryService()


def _sqlite_directory(params: Params) -> object:
    from builder.castore.directories.sqlite import SqliteDirectoryService

    return SqliteDirectoryService(params.string("path"))


def _objectstore_directory(params: Params) -> object:
    from builder.castore.directories.objectstore import ObjectStoreDirectoryService
    from builder.castore.objectstore_url import parse_objectstore_url

    url, options = parse_objectstore_url(params.string("url"))
    options.update(params.mapping("options"))
    return ObjectStoreDirectoryService(url, options)


def _grpc_directory(params: Params) -> object:
    from builder.castore.directories.grpc import GrpcDirectoryService

    return GrpcDirectoryService(params.string("url"), _family(params), _security(params))


def _cache_directory(params: Params) -> object:
    from builder.castore.directories.cache import CacheDirectoryService

    return CacheDirectoryService(params.directory("near"), params.directory("far"))


DEFAULT_REGISTRY = Registry()
for _type, _factory in {
    "memory": _memory_blob,
    "fs": _fs_blob,
    "objectstore": _objectstore_blob,
    "grpc": _grpc_blob,
    "combined": _combined_blob,
}.items():
    DEFAULT_REGISTRY.register("blob", _type, _factory)
for _type, _factory in {
    "memory": _memory_directory,
    "sqlite": _sqlite_directory,
    "objectstore": _objectstore_directory,
    "grpc": _grpc_directory,
    "cache": _cache_directory,
}.items():
    DEFAULT_REGISTRY.register("directory", _type, _factory)

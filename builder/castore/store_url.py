"""URL shorthands for single services and for whole stores.

``memory://``, ``fs:///path``, ``sqlite:///path``, ``objectstore+<url>`` and
``grpc+unix:///socket`` / ``grpc+http://host:port`` each stand for one
instance configuration; a store URL names a blob and a directory service at
once, so ``--store fs:///var/lib/builder`` is the whole embedded layout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from builder.castore.composition import ConfigError, Kind

EMBEDDED_BLOBS = "blobs"
EMBEDDED_DIRECTORIES = "directories.sqlite"


def _path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/"):
        raise ConfigError(f"{url!r}: expected an absolute path, as in scheme:///abs/path")
    return parts.path


def service_config(kind: Kind, url: str) -> dict[str, Any]:
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        return {"type": "memory"}
    if scheme.startswith("grpc+"):
        return {"type": "grpc", "url": url}
    if scheme.startswith("objectstore+"):
        return {"type": "objectstore", "url": url.removeprefix("objectstore+")}
    if kind == "blob" and scheme == "fs":
        return {"type": "fs", "path": _path(url)}
    if kind == "directory" and scheme == "sqlite":
        return {"type": "sqlite", "path": _path(url) if url != "sqlite://" else ":memory:"}
    raise ConfigError(f"{url!r} is not a {kind} service URL")


def store_config(url: str) -> dict[str, Any]:
    """A two-section configuration with both roots named ``root``."""
    scheme = url.split("://", 1)[0]
    if scheme == "fs":
        root = _path(url).rstrip("/")
        blob: dict[str, Any] = {"type": "fs", "path": f"{root}/{EMBEDDED_BLOBS}"}
        directory: dict[str, Any] = {"type": "sqlite", "path": f"{root}/{EMBEDDED_DIRECTORIES}"}
    elif scheme == "sqlite":
        raise ConfigError(
            f"{url!r} names only a directory database; use fs:///DIR for the embedded store "
            "or a configuration file to pair it with a blob service"
        )
    else:
        blob, directory = service_config("blob", url), service_config("directory", url)
    return {"blobservices": {"root": blob}, "directoryservices": {"root": directory}}

"""Store URLs: one address naming a blob and a directory service at once.

Any single-service URL a backend accepts for both kinds names a store, and
``fs:///DIR`` is the whole embedded layout, so ``--store fs:///var/lib/builder``
puts fs blobs beside a SQLite directory database.
"""

from __future__ import annotations

from typing import Any

from builder.castore.composition import ConfigError, Registry, url_path, url_scheme

EMBEDDED_BLOBS = "blobs"
EMBEDDED_DIRECTORIES = "directories.sqlite"


def store_config(url: str, registry: Registry) -> dict[str, Any]:
    """A two-section configuration with both roots named ``root``."""
    scheme = url_scheme(url)
    if scheme == "fs":
        root = url_path(url).rstrip("/")
        blob = registry.url_config("blob", f"fs://{root}/{EMBEDDED_BLOBS}")
        directory = registry.url_config("directory", f"sqlite://{root}/{EMBEDDED_DIRECTORIES}")
    elif scheme == "sqlite":
        raise ConfigError(
            f"{url!r} names only a directory database; use fs:///DIR for the embedded store "
            "or a configuration file to pair it with a blob service"
        )
    else:
        blob, directory = registry.url_config("blob", url), registry.url_config("directory", url)
    return {"blobservices": {"root": blob}, "directoryservices": {"root": directory}}

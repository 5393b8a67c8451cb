"""Store URLs: one address naming the blob, directory, PathInfo and result services at once.

Any URL every kind's backends accept names a store (a gRPC server, an object
store), and ``fs:///DIR`` is the whole embedded layout, so
``--store fs:///var/lib/builder`` puts fs blobs beside SQLite databases of
directories, of path infos and of the host files imported so far, with the
result cache where the build service has always kept it in the default layout
(``build/results.sqlite``, the default work directory), so its entries carry
over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.castore.composition import SECTIONS, ConfigError, Registry, url_path, url_scheme

EMBEDDED_BLOBS = "blobs"
EMBEDDED_DIRECTORIES = "directories.sqlite"
EMBEDDED_PATHINFOS = "pathinfo.sqlite"
EMBEDDED_IMPORTS = "imports.sqlite"
EMBEDDED_RESULTS = "build/results.sqlite"


def embedded_directory(url: str) -> Path | None:
    """The directory an ``fs://`` URL lays the embedded store out in; None for other URLs."""
    if url_scheme(url) != "fs":
        return None
    return Path(url_path(url).rstrip("/") or "/")


def store_config(url: str, registry: Registry) -> dict[str, Any]:
    """A configuration of every section with every root named ``root``."""
    scheme = url_scheme(url)
    if scheme == "fs":
        root = url_path(url).rstrip("/")
        roots = {
            "blob": registry.url_config("blob", f"fs://{root}/{EMBEDDED_BLOBS}"),
            "directory": registry.url_config(
                "directory", f"sqlite://{root}/{EMBEDDED_DIRECTORIES}"
            ),
            "pathinfo": registry.url_config("pathinfo", f"sqlite://{root}/{EMBEDDED_PATHINFOS}"),
            "resultcache": registry.url_config(
                "resultcache", f"sqlite://{root}/{EMBEDDED_RESULTS}"
            ),
        }
    elif scheme == "sqlite":
        raise ConfigError(
            f"{url!r} names only a database; use fs:///DIR for the embedded store "
            "or a configuration file to pair it with a blob service"
        )
    else:
        roots = {kind: registry.url_config(kind, url) for kind in SECTIONS}
    return {SECTIONS[kind]: {"root": config} for kind, config in roots.items()}

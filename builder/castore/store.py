"""A store: the blob and directory service pair everything else works on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.service import BlobService
from builder.castore.composition import Composition
from builder.castore.directories.service import DirectoryService
from builder.castore.registry import DEFAULT_REGISTRY
from builder.castore.store_url import store_config

DATA_DIR_ENV = "BUILDER_DATA_DIR"
ROOT = "root"


def default_data_dir() -> Path:
    """``$BUILDER_DATA_DIR``, else ``$XDG_DATA_HOME/builder``, else ``~/.local/share/builder``."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "builder"


@dataclass
class Store:
    blobs: BlobService
    directories: DirectoryService
    composition: Composition

    @classmethod
    def open(cls, spec: str | None = None, data_dir: Path | None = None) -> Store:
        """Open a store from a URL, a configuration file, or the embedded default.

        With neither a spec nor a data directory, the embedded store lives in
        the default data directory: fs blobs beside a SQLite directory database.
        """
        if spec is None:
            root = (data_dir or default_data_dir()).resolve()
            spec = f"fs://{root}"
        if "://" in spec:
            composition = Composition(store_config(spec, DEFAULT_REGISTRY), DEFAULT_REGISTRY)
        else:
            composition = Composition.from_file(spec, DEFAULT_REGISTRY)
        return cls(composition.blob_service(ROOT), composition.directory_service(ROOT), composition)

    def close(self) -> None:
        self.composition.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

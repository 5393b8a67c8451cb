"""A store: the blob, directory and PathInfo services everything else works on.

The castore holds contents; the PathInfo service says which Nix store paths
those contents are. Opening any store, embedded, remote or configured, gives
all three, so that nothing above has to pair them up itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.service import BlobService
from builder.castore.composition import Composition
from builder.castore.directories.service import DirectoryService
from builder.store.registry import DEFAULT_REGISTRY
from builder.store.service import PathInfoService
from builder.store.store_url import store_config

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
    pathinfos: PathInfoService
    composition: Composition

    @classmethod
    def open(cls, spec: str | None = None, data_dir: Path | None = None) -> Store:
        """Open a store from a URL, a configuration file, or the embedded default.

        With neither a spec nor a data directory, the embedded store lives in
        the default data directory: fs blobs beside SQLite databases of
        directories and path infos.
        """
        if spec is None:
            root = (data_dir or default_data_dir()).resolve()
            spec = f"fs://{root}"
        if "://" in spec:
            composition = Composition(store_config(spec, DEFAULT_REGISTRY), DEFAULT_REGISTRY)
        else:
            composition = Composition.from_file(spec, DEFAULT_REGISTRY)
        try:
            return cls(
                composition.blob_service(ROOT),
                composition.directory_service(ROOT),
                composition.pathinfo_service(ROOT),
                composition,
            )
        except BaseException:
            composition.close()
            raise

    def close(self) -> None:
        self.composition.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

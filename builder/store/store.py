"""A store: the blob, directory, PathInfo and result services everything else works on.

The castore holds contents; the PathInfo service says which Nix store paths
those contents are; the result cache which builds made which contents. Opening
any store, embedded, remote or configured, gives all four, so that nothing
above has to pair them up itself, and builders configured with one shared
store share all of it. The embedded
store also keeps a record of the host files imported into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.castore.blobs.service import BlobService
from builder.castore.composition import Composition
from builder.castore.directories.service import DirectoryService
from builder.store.registry import DEFAULT_REGISTRY
from builder.store.results.memory import MemoryResultCache
from builder.store.results.service import ResultCache
from builder.store.service import PathInfoService
from builder.store.store_url import EMBEDDED_IMPORTS, embedded_directory, store_config

if TYPE_CHECKING:
    from builder.castore.fs.import_record import ImportRecord

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
    results: ResultCache
    composition: Composition
    import_record_path: Path | None = None
    _import_record: ImportRecord | None = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, spec: str | None = None, data_dir: Path | None = None) -> Store:
        """Open a store from a URL, a configuration file, or the embedded default.

        With neither a spec nor a data directory, the embedded store lives in
        the default data directory: fs blobs beside SQLite databases of
        directories, path infos, results and host files imported. A
        configuration file without a ``resultcaches`` root keeps results in
        memory, for as long as the store is open.
        """
        if spec is None:
            root = (data_dir or default_data_dir()).resolve()
            spec = f"fs://{root}"
        record_path = None
        if "://" in spec:
            composition = Composition(store_config(spec, DEFAULT_REGISTRY), DEFAULT_REGISTRY)
            embedded = embedded_directory(spec)
            if embedded is not None:
                record_path = embedded / EMBEDDED_IMPORTS
        else:
            composition = Composition.from_file(spec, DEFAULT_REGISTRY)
        try:
            return cls(
                composition.blob_service(ROOT),
                composition.directory_service(ROOT),
                composition.pathinfo_service(ROOT),
                _result_cache(composition),
                composition,
                record_path,
            )
        except BaseException:
            composition.close()
            raise

    @property
    def data_dir(self) -> Path | None:
        """The data directory of an embedded store; None for a configured one."""
        return None if self.import_record_path is None else self.import_record_path.parent

    def import_record(self) -> ImportRecord | None:
        """What host files were imported as, for ``ingest_path``; opened on first use.

        Only the embedded store keeps one, beside its other databases: a hit
        costs one check that the blob is still stored, a stat there, whereas
        asking a remote or configured store would cost a round trip per file,
        more than hashing a small file. Callers use it from one thread; it is
        imported here so that a store opened for anything else never loads it.
        """
        from builder.castore.fs.import_record import ImportRecord

        if self._import_record is None and self.import_record_path is not None:
            self._import_record = ImportRecord(self.import_record_path)
        return self._import_record

    def close(self) -> None:
        try:
            if self._import_record is not None:
                self._import_record.close()
        finally:
            try:
                self.results.close()
            finally:
                self.composition.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _result_cache(composition: Composition) -> ResultCache:
    if composition.defines("resultcache", ROOT):
        return composition.result_cache(ROOT)
    return MemoryResultCache()

"""Store paths as a Nix build sees them, with no build service behind them.

A path is recorded here (built before, or ingested from Nix) or valid in the
local Nix store, whence it is ingested on first use. Planning, the outputs of
a derivation that needs no build, and exporting to Nix all work from this
alone, so a call with nothing to build starts nothing to build with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.nix.derivation import Derivation
from builder.nix.export import write_export
from builder.nix.inputs import InputResolver
from builder.nix.nix_store import NixStore
from builder.nix.plan import Job, plan
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService
from builder.store.store_path import StorePath


class NixPaths:
    def __init__(
        self,
        pathinfos: PathInfoService,
        blobs: BlobService,
        directories: DirectoryService,
        nix_env: Mapping[str, str] | None = None,
    ) -> None:
        self.pathinfos = pathinfos
        self.blobs = blobs
        self.directories = directories
        self.nix = NixStore(nix_env)
        self.resolver = InputResolver(pathinfos, self.nix, blobs, directories)

    def plan(self, root: StorePath) -> dict[StorePath, Job]:
        return plan(root, self.pathinfos, self.nix)

    def known_outputs(self, drv: Derivation) -> list[PathInfo]:
        """Outputs built before, here or by Nix (then ingested), in the derivation's order."""
        paths = [o.path for o in drv.outputs]
        by_path = {info.path: info for info in self.resolver.closure(paths)}
        return [by_path[path] for path in paths]

    def export(self, infos: list[PathInfo], out: BinaryIO, skip_valid_in_nix: bool = True) -> None:
        """Write the export stream of ``infos`` and their closure (less what Nix has)."""
        closure = self.resolver.closure(info.path for info in infos)
        if skip_valid_in_nix:
            present = self.nix.valid(info.path for info in closure)
            closure = [info for info in closure if info.path not in present]
        write_export(closure, out, self.blobs, self.directories)

    def import_to_nix(self, infos: list[PathInfo]) -> None:
        self.nix.import_stream(lambda stdin: self.export(infos, stdin))

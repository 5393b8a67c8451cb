"""Finding a derivation's input closure in the castore, ingesting from Nix what is missing.

A path we built is already recorded in the PathInfo service; anything else must be valid in
the local Nix store, whence it is ingested once, with the references and NAR
hash Nix recorded for it. References are followed until the closure is
complete, so a build sees every path its inputs may point at.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.errors import NotFoundError
from builder.nix.nix_store import NixStore
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService, lookup
from builder.store.store_path import StorePath


class InputResolver:
    def __init__(
        self,
        pathinfos: PathInfoService,
        nix: NixStore,
        blobs: BlobService,
        directories: DirectoryService,
    ) -> None:
        self._pathinfos = pathinfos
        self._nix = nix
        self._blobs = blobs
        self._directories = directories
        # Parallel builds often share inputs: each path is ingested once, by the first
        # build that lacks it, while builds lacking other paths ingest those meanwhile.
        self._claims = threading.Condition()
        self._ingesting: set[StorePath] = set()

    def closure(self, roots: Iterable[StorePath]) -> list[PathInfo]:
        """The closure of ``roots``, ingesting from Nix what is not recorded here.

        A closure recorded in full waits for nothing; one that lacks paths
        waits only for builds ingesting some of those same paths.
        """
        found: dict[StorePath, PathInfo] = {}
        pending = set(roots)
        while pending:
            recorded, missing = self._recorded(pending)
            found.update((info.path, info) for info in recorded)
            if missing:
                for info in self._ingest_once(missing):
                    found[info.path] = info
            pending = {r for p in pending for r in found[p].references} - found.keys()
        return sorted(found.values(), key=lambda i: i.path.basename)

    def _ingest_once(self, paths: list[StorePath]) -> list[PathInfo]:
        """Claim ``paths`` (all at once, so claims never deadlock) and ingest those still missing.

        Another build may have ingested some while this one waited for its claim.
        """
        with self._claims:
            self._claims.wait_for(lambda: self._ingesting.isdisjoint(paths))
            self._ingesting.update(paths)
        try:
            recorded, missing = self._recorded(paths)
            return recorded + self._ingest(missing)
        finally:
            with self._claims:
                self._ingesting.difference_update(paths)
                self._claims.notify_all()

    def _recorded(self, paths: Iterable[StorePath]) -> tuple[list[PathInfo], list[StorePath]]:
        """The records of ``paths`` kept here, and the paths that have none."""
        recorded: list[PathInfo] = []
        missing: list[StorePath] = []
        for path in paths:
            info = lookup(self._pathinfos, path)
            if info is None:
                missing.append(path)
            else:
                recorded.append(info)
        return recorded, missing

    def _ingest(self, paths: list[StorePath]) -> list[PathInfo]:
        facts = self._nix.facts(self._nix.valid(paths))
        absent = sorted(set(paths) - facts.keys())
        if absent:
            shown = ", ".join(map(str, absent))
            raise NotFoundError(f"neither built here nor valid in the Nix store: {shown}")
        infos = []
        for path, fact in sorted(facts.items()):
            node = ingest_path(
                str(path), self._blobs, self._directories, os.fsencode(path.basename)
            )
            info = PathInfo(
                path, node, fact.nar_sha256, fact.nar_size, fact.references, fact.deriver
            )
            self._pathinfos.put(info)
            infos.append(info)
        return infos

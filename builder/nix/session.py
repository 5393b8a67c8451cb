"""Everything a Nix build needs, assembled once over a store and a build service.

The CLI, the tests and the benchmark all build derivations the same way: paths
are recorded in the store's PathInfo service beside the castore holding their
contents, inputs come from the local Nix store, outputs are recorded and can
be imported back into Nix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from builder.executor.service import BuildExecutor
from builder.nix.build import DerivationBuilder, EventCallback
from builder.nix.derivation import load_derivation
from builder.nix.export import write_export
from builder.nix.inputs import InputResolver
from builder.nix.nix_store import NixStore
from builder.nix.recursive import build_recursively
from builder.store import nixbase32
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService
from builder.store.store_path import StorePath


@dataclass(frozen=True)
class CheckResult:
    path: StorePath
    first: PathInfo
    again: PathInfo

    @property
    def identical(self) -> bool:
        return self.first.nar_sha256 == self.again.nar_sha256


def describe(info: PathInfo) -> str:
    """The line ``builder nix build`` prints per output."""
    return f"{info.path} sha256:{nixbase32.encode(info.nar_sha256)}"


class NixSession:
    def __init__(
        self,
        service: BuildExecutor,
        pathinfos: PathInfoService,
        nix_env: Mapping[str, str] | None = None,
    ) -> None:
        self._service = service
        self.pathinfos = pathinfos
        self.nix = NixStore(nix_env)
        self._resolver = InputResolver(pathinfos, self.nix, service.blobs, service.directories)
        self._builder = DerivationBuilder(
            service,
            self._resolver,
            pathinfos,
            service.blobs,
            service.directories,
            impure_env=dict(os.environ),
        )

    def build(self, drv_path: str, on_event: EventCallback | None = None) -> list[PathInfo]:
        root = StorePath.parse(drv_path, "derivation")
        return build_recursively(
            root, self._builder, self.pathinfos, self.nix, self._service.job_slots, on_event
        )

    def check(self, drv_path: str, on_event: EventCallback | None = None) -> list[CheckResult]:
        """Build again (the service must not answer from its result cache) and compare."""
        first = self.build(drv_path, on_event)
        root = StorePath.parse(drv_path, "derivation")
        again = self._builder.build(root, load_derivation(drv_path), on_event, record=False)
        return [CheckResult(a.path, a, b) for a, b in zip(first, again, strict=True)]

    def export(self, infos: list[PathInfo], out: BinaryIO, skip_valid_in_nix: bool = True) -> None:
        """Write the export stream of ``infos`` and their closure (less what Nix has)."""
        closure = self._resolver.closure(info.path for info in infos)
        if skip_valid_in_nix:
            present = self.nix.valid(info.path for info in closure)
            closure = [info for info in closure if info.path not in present]
        write_export(closure, out, self._service.blobs, self._service.directories)

    def import_to_nix(self, infos: list[PathInfo]) -> None:
        self.nix.import_stream(lambda stdin: self.export(infos, stdin))

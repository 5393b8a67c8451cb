"""Everything a Nix build needs, assembled once over Nix paths and a build service.

The CLI, the tests and the benchmark all build derivations the same way: paths
are recorded in the store's PathInfo service beside the castore holding their
contents, inputs come from the local Nix store, outputs are recorded and can
be imported back into Nix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from builder.executor.service import BuildExecutor
from builder.nix.build import DerivationBuilder, EventCallback
from builder.nix.derivation import load_derivation
from builder.nix.paths import NixPaths
from builder.nix.plan import Job
from builder.nix.recursive import build_recursively
from builder.store.path_info import PathInfo
from builder.store.store_path import StorePath


@dataclass(frozen=True)
class CheckResult:
    path: StorePath
    first: PathInfo
    again: PathInfo

    @property
    def identical(self) -> bool:
        return self.first.nar_sha256 == self.again.nar_sha256


class NixSession:
    def __init__(self, service: BuildExecutor, paths: NixPaths) -> None:
        self._service = service
        self.paths = paths
        self._builder = DerivationBuilder(
            service,
            paths.resolver,
            paths.pathinfos,
            service.blobs,
            service.directories,
            impure_env=dict(os.environ),
        )

    def build(self, drv_path: str, on_event: EventCallback | None = None) -> list[PathInfo]:
        root = StorePath.parse(drv_path, "derivation")
        return self.build_planned(root, self.paths.plan(root), on_event)

    def build_planned(
        self, root: StorePath, graph: dict[StorePath, Job], on_event: EventCallback | None = None
    ) -> list[PathInfo]:
        """Build ``graph``, planned for ``root`` with nothing recorded since."""
        built = build_recursively(root, graph, self._builder, self._service.job_slots, on_event)
        if built is not None:
            return built
        return self.paths.known_outputs(load_derivation(str(root)))

    def check(self, drv_path: str, on_event: EventCallback | None = None) -> list[CheckResult]:
        """Build again (the service must not answer from its result cache) and compare."""
        first = self.build(drv_path, on_event)
        root = StorePath.parse(drv_path, "derivation")
        again = self._builder.build(root, load_derivation(drv_path), on_event, record=False)
        return [CheckResult(a.path, a, b) for a, b in zip(first, again, strict=True)]

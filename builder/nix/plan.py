"""Which derivations of a dependency graph need building, and in what order.

An input derivation needs building only when one of its wanted outputs is
neither known here nor valid in the Nix store; graph walking stops at
derivations whose outputs are available. Planning reads ``.drv`` files and
the PathInfo service, and asks Nix only about outputs on disk, so it is cheap
enough to do before anything is started for the builds themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from builder.nix.derivation import Derivation, load_derivation
from builder.nix.nix_store import NixStore
from builder.store.service import PathInfoService, lookup
from builder.store.store_path import StorePath


@dataclass
class Job:
    drv: Derivation
    waiting_for: set[StorePath] = field(default_factory=set)
    needed_by: set[StorePath] = field(default_factory=set)


def plan(root: StorePath, registry: PathInfoService, nix: NixStore) -> dict[StorePath, Job]:
    """The derivations to build, each with the to-be-built derivations it waits for."""
    root_drv = load_derivation(str(root))
    if not _missing({root: root_drv}, {root: {o.name for o in root_drv.outputs}}, registry, nix):
        return {}
    jobs: dict[StorePath, Job] = {root: Job(root_drv)}
    frontier = [root]
    while frontier:
        wanted: dict[StorePath, set[str]] = {}
        for path in frontier:
            for input_drv, names in jobs[path].drv.input_derivations:
                wanted.setdefault(input_drv, set()).update(names)
        loaded = {
            path: jobs[path].drv if path in jobs else load_derivation(str(path)) for path in wanted
        }
        new = [p for p in _missing(loaded, wanted, registry, nix) if p not in jobs]
        jobs.update((path, Job(loaded[path])) for path in new)
        for path in frontier:
            for input_drv, _ in jobs[path].drv.input_derivations:
                if input_drv in jobs:
                    jobs[path].waiting_for.add(input_drv)
                    jobs[input_drv].needed_by.add(path)
        frontier = new
    return jobs


def _missing(
    drvs: dict[StorePath, Derivation],
    wanted: dict[StorePath, set[str]],
    registry: PathInfoService,
    nix: NixStore,
) -> list[StorePath]:
    """Derivations with a wanted output neither known here nor valid in Nix."""
    outputs = {
        path: [o.path for o in drv.outputs if o.name in wanted[path]] for path, drv in drvs.items()
    }
    unknown = {p for paths in outputs.values() for p in paths if lookup(registry, p) is None}
    valid_in_nix = nix.valid(unknown)
    return sorted(
        path
        for path, paths in outputs.items()
        if any(p in unknown and p not in valid_in_nix for p in paths)
    )

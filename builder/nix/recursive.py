"""Building a derivation together with whatever of its dependency graph is missing.

An input derivation needs building only when one of its wanted outputs is
neither known here nor valid in the Nix store; graph walking stops at
derivations whose outputs are available. Independent derivations run in
parallel on a thread pool as wide as the build service's job slots. After a
failure nothing new is started, what runs is let finish, and the error names
the derivation that failed and, if different, the one that needed it.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from builder.errors import BuilderError, BuildFailedError
from builder.nix.build import DerivationBuilder, EventCallback
from builder.nix.derivation import Derivation, load_derivation
from builder.nix.nix_store import NixStore
from builder.store.path_info import PathInfo
from builder.store.service import PathInfoService, lookup
from builder.store.store_path import StorePath


@dataclass
class _Job:
    drv: Derivation
    waiting_for: set[StorePath] = field(default_factory=set)
    needed_by: set[StorePath] = field(default_factory=set)


def plan(root: StorePath, registry: PathInfoService, nix: NixStore) -> dict[StorePath, _Job]:
    """The derivations to build, each with the to-be-built derivations it waits for."""
    root_drv = load_derivation(str(root))
    if not _missing({root: root_drv}, {root: {o.name for o in root_drv.outputs}}, registry, nix):
        return {}
    jobs: dict[StorePath, _Job] = {root: _Job(root_drv)}
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
        jobs.update((path, _Job(loaded[path])) for path in new)
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


def build_recursively(
    root: StorePath,
    builder: DerivationBuilder,
    registry: PathInfoService,
    nix: NixStore,
    jobs: int,
    on_event: EventCallback | None = None,
) -> list[PathInfo]:
    """Build what is missing and return the root's outputs, built now or known before."""
    graph = plan(root, registry, nix)
    results: dict[StorePath, list[PathInfo]] = {}
    failure: tuple[StorePath, BuilderError] | None = None
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running: dict[Future[list[PathInfo]], StorePath] = {}

        def start_ready() -> None:
            for path, job in graph.items():
                if not job.waiting_for and path not in results and path not in running.values():
                    running[pool.submit(builder.build, path, job.drv, on_event)] = path

        start_ready()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                path = running.pop(future)
                try:
                    results[path] = future.result()
                except BuilderError as exc:
                    failure = failure or (path, exc)
                    continue
                for dependent in graph[path].needed_by:
                    graph[dependent].waiting_for.discard(path)
            if failure is None:
                start_ready()
    if failure is not None:
        failed, exc = failure
        if failed == root:
            raise exc
        raise BuildFailedError(f"cannot build '{root}': dependency failed: {exc}") from exc
    if root in results:
        return results[root]
    return builder.known_outputs(load_derivation(str(root)))

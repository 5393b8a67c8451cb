"""Building a derivation together with whatever of its dependency graph is missing.

The plan (``builder.nix.plan``) names the derivations to build. Independent derivations run in
parallel on a thread pool as wide as the build service's job slots. After a
failure nothing new is started, what runs is let finish, and the error names
the derivation that failed and, if different, the one that needed it.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from builder.errors import BuilderError, BuildFailedError
from builder.nix.build import DerivationBuilder, EventCallback
from builder.nix.plan import Job
from builder.store.path_info import PathInfo
from builder.store.store_path import StorePath


def build_recursively(
    root: StorePath,
    graph: dict[StorePath, Job],
    builder: DerivationBuilder,
    jobs: int,
    on_event: EventCallback | None = None,
) -> list[PathInfo] | None:
    """Build ``graph`` and return the root's outputs, or None if the root needed no build."""
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
    return results.get(root)

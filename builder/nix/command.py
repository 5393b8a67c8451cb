"""``builder nix build``: a derivation and its missing dependencies, results printed for Nix.

Build logs go to standard error prefixed with the derivation's name, so
parallel builds stay readable; standard output carries only the result lines.
The derivation is planned before anything is started to build with: when
all its outputs are known here or valid in Nix, no build service (and so no
sandbox launcher or connection to a server) is started and the modules that
build are not even imported.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from builder.errors import BuildFailedError
from builder.nix.derivation import load_derivation
from builder.nix.paths import NixPaths
from builder.nix.plan import Job
from builder.store import nixbase32
from builder.store.path_info import PathInfo
from builder.store.store_path import StorePath

if TYPE_CHECKING:
    from builder.executor.service import BuildExecutor, Event

StartBuilds = Callable[[], AbstractContextManager["BuildExecutor"]]


def describe(info: PathInfo) -> str:
    """The line ``builder nix build`` prints per output."""
    return f"{info.path} sha256:{nixbase32.encode(info.nar_sha256)}"


def nix_build(
    paths: NixPaths, drv_path: str, import_to_nix: bool, check: bool, start_builds: StartBuilds
) -> None:
    """Print the outputs of ``drv_path``, building what is missing on ``start_builds()``."""
    root = StorePath.parse(drv_path, "derivation")
    graph = paths.plan(root)
    if graph or check:
        with start_builds() as service:
            infos = _build(service, paths, root, graph, check)
    else:
        infos = paths.known_outputs(load_derivation(drv_path))
        for info in infos:
            print(describe(info))
    if import_to_nix:
        paths.import_to_nix(infos)


def _build(
    service: BuildExecutor,
    paths: NixPaths,
    root: StorePath,
    graph: dict[StorePath, Job],
    check: bool,
) -> list[PathInfo]:
    from builder.executor.service import LogData
    from builder.nix.session import NixSession

    session = NixSession(service, paths)
    lock = threading.Lock()

    def on_event(drv: StorePath, event: Event) -> None:
        if isinstance(event, LogData):
            prefix = f"{drv.name.removesuffix('.drv')}> ".encode()
            lines = event.data.splitlines(keepends=True)
            with lock:
                sys.stderr.buffer.write(b"".join(prefix + line for line in lines))
                sys.stderr.buffer.flush()

    if check:
        results = session.check(str(root), on_event)
        for result in results:
            verdict = "identical" if result.identical else "DIFFERS"
            print(f"{describe(result.again)} {verdict}")
        if not all(r.identical for r in results):
            raise BuildFailedError(f"'{root}' is not deterministic")
        return [r.first for r in results]
    infos = session.build_planned(root, graph, on_event)
    for info in infos:
        print(describe(info))
    return infos

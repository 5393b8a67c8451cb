"""``builder nix build``: a derivation and its missing dependencies, results printed for Nix.

Build logs go to standard error prefixed with the derivation's name, so
parallel builds stay readable; standard output carries only the result lines.
"""

from __future__ import annotations

import sys
import threading

from builder.errors import BuildFailedError
from builder.executor.service import BuildExecutor, Event, LogData
from builder.nix.session import NixSession, describe
from builder.store.service import PathInfoService
from builder.store.store_path import StorePath


def nix_build(
    service: BuildExecutor,
    pathinfos: PathInfoService,
    drv_path: str,
    import_to_nix: bool,
    check: bool,
) -> None:
    session = NixSession(service, pathinfos)
    lock = threading.Lock()

    def on_event(drv: StorePath, event: Event) -> None:
        if isinstance(event, LogData):
            prefix = f"{drv.name.removesuffix('.drv')}> ".encode()
            lines = event.data.splitlines(keepends=True)
            with lock:
                sys.stderr.buffer.write(b"".join(prefix + line for line in lines))
                sys.stderr.buffer.flush()

    if check:
        results = session.check(drv_path, on_event)
        for result in results:
            verdict = "identical" if result.identical else "DIFFERS"
            print(f"{describe(result.again)} {verdict}")
        if not all(r.identical for r in results):
            raise BuildFailedError(f"'{drv_path}' is not deterministic")
        infos = [r.first for r in results]
    else:
        infos = session.build(drv_path, on_event)
        for info in infos:
            print(describe(info))
    if import_to_nix:
        session.import_to_nix(infos)

"""Finding processes by a marker in their command line, to prove builds are gone."""

from __future__ import annotations

import contextlib

import psutil

from tests.isolation import TOKEN, TOKEN_VARIABLE


def processes_with(marker: str) -> list[psutil.Process]:
    """Processes whose arguments, joined by spaces, contain ``marker``.

    The marker must carry this run's token, so that processes of another run
    on the host never count.
    """
    assert TOKEN in marker, f"marker {marker!r} does not carry this run's token"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
    return found


def strays() -> list[psutil.Process]:
    """Processes this run started that no longer descend from the test process.

    Every process the run starts inherits its token in the environment, so this
    finds, say, a remote program its client killed or a launcher that outlived
    its parent, while the run's own children (a server of a fixture) do not count.
    """
    me = psutil.Process()
    ours = {me.pid, *(child.pid for child in me.children(recursive=True))}
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid not in ours and process.environ().get(TOKEN_VARIABLE) == TOKEN:
                found.append(process)
    return found

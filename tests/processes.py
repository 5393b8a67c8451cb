"""Finding processes by a marker in their command line, to prove builds are gone."""

from __future__ import annotations

import contextlib

import psutil

from tests.isolation import TOKEN


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

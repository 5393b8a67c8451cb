"""Finding processes by a marker in their command line, to prove builds are gone."""

from __future__ import annotations

import contextlib

import psutil


def processes_with(marker: str) -> list[psutil.Process]:
    """Processes whose arguments, joined by spaces, contain ``marker``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(process.info["cmdline"] or []):
                found.append(process)
    return found

"""Waiting for a state a test can observe, rather than sleeping for a time that usually suffices.

The suite runs on shared and loaded machines, so deadlines are generous; a
wait ends as soon as its condition holds, so a long deadline costs nothing
when all is well.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE = 60.0
POLL_INTERVAL = 0.02


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(POLL_INTERVAL)

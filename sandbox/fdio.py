"""Writing to descriptors, where one ``os.write`` may take only part of the bytes."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``: pipes and files may each accept only part of a write."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

"""Removing what a build wrote, whatever permissions it left behind."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def remove_tree(path: Path) -> None:
    """Remove a work directory even where the build left read-only directories."""

    def make_writable(function: object, failed: str, exc_info: object) -> None:
        os.chmod(os.path.dirname(failed), stat.S_IRWXU)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IRWXU)
            shutil.rmtree(failed, onerror=make_writable)
        else:
            os.unlink(failed)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)

"""What tests that need root, namespaces or Nix require of the machine.

CI runs the suite as root on a machine prepared by scripts/setup.sh, so a
missing requirement is a failure that names what is missing: a skip would let
the suite pass without checking what those tests are for.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

SETUP = "scripts/setup.sh prepares the machine; run the suite as root"
NIX_TOOLS = ("nix-instantiate", "nix-store", "nix-hash")


def missing(what: str) -> NoReturn:
    """A failure rather than a skip, so that CI cannot pass without the test."""
    pytest.fail(f"missing {what} ({SETUP})", pytrace=False)


def require_root(because: str) -> None:
    """Build users, mounts and cgroups are root's; ``because`` names what the test needs."""
    if os.geteuid() != 0:
        missing(f"root ({because})")


def require_nix() -> None:
    """Nix is the reference the product is compared with; nix-bin provides these tools."""
    absent = [tool for tool in NIX_TOOLS if shutil.which(tool) is None]
    if absent:
        missing(", ".join(absent) + " on PATH (Debian package nix-bin)")

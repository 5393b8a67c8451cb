"""Nix as the peer benchmarks measure against: trivial derivations, realised fresh.

Every realisation must really build, so each run gets its own derivation
(a tag per benchmark run and an iteration number per derivation), all
instantiated before anything is timed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

BUSYBOX = "/bin/busybox"
NIX_CONFIG = "build-users-group =\nsubstituters =\nsandbox = true\n"
_DERIVATIONS = """
{ tag, count, name, script }:
let bb = builtins.path { path = ./bb; name = "bench-busybox"; };
in builtins.genList (i: derivation {
  inherit name tag;
  system = builtins.currentSystem;
  builder = "${bb}/busybox";
  args = [ "sh" "-c" script ];
  iteration = toString i;
}) count
"""


def nix_env() -> dict[str, str]:
    return {**os.environ, "NIX_CONFIG": NIX_CONFIG}


def instantiate(workdir: Path, count: int, name: str, script: str) -> list[str]:
    """``count`` distinct derivations running ``script`` with busybox's sh."""
    (workdir / "bb").mkdir()
    shutil.copy(BUSYBOX, workdir / "bb" / "busybox")
    (workdir / "drvs.nix").write_text(_DERIVATIONS)
    tag = f"{os.getpid()}-{time.time_ns()}"
    out = subprocess.run(
        ["nix-instantiate", str(workdir / "drvs.nix"), "--argstr", "tag", tag,
         "--arg", "count", str(count), "--argstr", "name", name, "--argstr", "script", script],
        env=nix_env(), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.split()

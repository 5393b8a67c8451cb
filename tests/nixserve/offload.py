"""A real Nix client offloading builds to a remote program, all on this machine.

Nix reaches a machine whose host is ``localhost`` by ``bash -c`` rather than
ssh, so tests and benchmarks exercise the serve protocol end to end without
sshd. The remote side must never be the local Nix store: a build there would
wait for ever on the output lock the local ``nix-build`` holds.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sysconfig
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.nix.nix_store import nix_environment

SERVE_PROGRAM = Path(sysconfig.get_path("scripts")) / "builder-nix-serve"
SYSTEM = f"{platform.machine()}-linux"
NIX_FILES = Path(__file__).resolve().parent
# Nix announces each path it sends to a machine before its AddToStoreNar.
_UPLOAD = re.compile(r"copying path '(/nix/store/[^']+)' to 'ssh://localhost'")


@dataclass(frozen=True)
class Machine:
    """One entry of Nix's ``builders`` setting: the remote program, its store, its slots."""

    program: str
    store: str
    jobs: int = 2

    @property
    def uri(self) -> str:
        return f"ssh://localhost?remote-program={self.program}&remote-store={self.store}"

    @property
    def line(self) -> str:
        return f"{self.uri} {SYSTEM} - {self.jobs}"


def builders(*machines: Machine) -> str:
    return "; ".join(machine.line for machine in machines)


def offload_environment() -> dict[str, str]:
    """The local Nix's settings, and no substitution on the remote side: it has no cache to ask."""
    env = nix_environment()
    env["NIX_CONFIG"] += "\nbuilders-use-substitutes = false\n"
    return env


def offload(
    drvs: list[str],
    machines: list[Machine],
    *options: str,
    timeout: float = 600,
    environment: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``nix-build`` with no local build slots, so every derivation goes to ``machines``.

    ``environment`` adds variables, which the remote programs inherit.
    """
    env = {**offload_environment(), **(environment or {})}
    return subprocess.run(
        ["nix-build", *drvs, "--no-out-link", "--max-jobs", "0",
         "--option", "builders", builders(*machines), *options],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip


def rebuild_locally(drvs: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Build valid outputs again in the local Nix; it fails where a result differs."""
    return subprocess.run(
        ["nix-build", *drvs, "--no-out-link", "--check", "--keep-going", "--max-jobs", "1",
         "--option", "builders", ""],
        capture_output=True, text=True, env=offload_environment(), timeout=timeout, check=False,
    )  # fmt: skip


def uploads(log: str) -> Counter[str]:
    """How often the client sent each store path to a machine, from its own report."""
    return Counter(_UPLOAD.findall(log))


def instantiate(file: str, busybox: Path, *, attr: str | None = None, **args: str) -> list[str]:
    """The derivations of one of this folder's Nix files; ``args`` are its string arguments."""
    argv = ["nix-instantiate", str(NIX_FILES / file), "--argstr", "busyboxDir", str(busybox)]
    if attr is not None:
        argv += ["--attr", attr]
    for name, value in args.items():
        argv += ["--argstr", name, value]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=offload_environment(), check=True
    )
    return done.stdout.split()

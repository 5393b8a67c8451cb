"""Operator settings of the build service, with defaults for this machine."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

_SYSTEMS_BY_MACHINE = {
    # A 64-bit x86 kernel runs i686 binaries too (IA-32 emulation is on in
    # every distribution kernel we target).
    "x86_64": ("x86_64-linux", "i686-linux"),
    "aarch64": ("aarch64-linux",),
    "riscv64": ("riscv64-linux",),
}


def default_systems() -> tuple[str, ...]:
    machine = platform.machine()
    return _SYSTEMS_BY_MACHINE.get(machine, (f"{machine}-linux",))


def default_shell() -> str | None:
    """Debian's busybox-static: one static binary that works in any root."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.isfile(candidate):
            return candidate
    return shutil.which("busybox")


@dataclass(frozen=True)
class BuildLimits:
    """Ceilings applied to every build (None: unlimited)."""

    wall_time: float | None = 4 * 3600.0
    silence: float | None = None
    memory: int | None = None
    processes: int | None = 4096
    log_bytes: int | None = 64 << 20
    scratch_bytes: int | None = None


def total_memory() -> int:
    """The machine's RAM, as the kernel counts physical pages."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class BuildConfig:
    work_dir: Path
    systems: tuple[str, ...] = field(default_factory=default_systems)
    allowed_ro_paths: tuple[str, ...] = ()
    shell: str | None = field(default_factory=default_shell)
    limits: BuildLimits = field(default_factory=BuildLimits)
    job_slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    queue_length: int = 64
    host_memory: int = field(default_factory=total_memory)
    cache_max_bytes: int = 20 << 30
    result_cache: bool = True
    log_retention_seconds: float = 3600.0
    build_cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    # By the castore size rule (about two per name): 8 Mi is some 4 million
    # files and directories, an order of magnitude above the largest real
    # store paths (source trees and TeX distributions reach a few hundred
    # thousand), while a build's inputs at that bound still fit the
    # materialisation cache's inodes and directory blocks on any disk.
    max_input_size: int = 1 << 23
    # Seconds after which a work tree no running build uses is removed as leaked.
    stale_work_age: float = 3600.0
    # A build with network access shares the host's network namespace: it can
    # reach every local service, so only the operator may grant it.
    allow_network: bool = False
    # Scratch paths that hold no output and not the inputs (Nix's build
    # directory) are a tmpfs in the sandbox: no inode on the work dir's disk to
    # create or remove. An operator whose builds fill more than memory can hold
    # there keeps them on disk instead.
    build_dirs_in_memory: bool = True
    # GetLog calls following a running build at once; each holds a server
    # thread until the build ends, so a server reserves threads for this many.
    log_followers: int = 16

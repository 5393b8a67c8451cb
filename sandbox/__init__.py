"""Namespace-isolated runner for Nix-style builds.

Start a :class:`Launcher` once, early, then submit :class:`SandboxSpec` runs
from any thread and get a :class:`SandboxResult` back.
"""

from sandbox.errors import (
    LauncherError,
    SandboxError,
    SetupError,
    SpecError,
    SyscallError,
    UidsExhaustedError,
)
from sandbox.launcher import Launcher, LauncherConfig, RunHandle
from sandbox.result import CANCELLED, Limit, SandboxResult
from sandbox.spec import Bind, File, Limits, SandboxSpec, Scratch, Symlink

__all__ = [
    "CANCELLED",
    "Bind",
    "File",
    "Launcher",
    "LauncherConfig",
    "LauncherError",
    "Limit",
    "Limits",
    "RunHandle",
    "SandboxError",
    "SandboxResult",
    "SandboxSpec",
    "Scratch",
    "SetupError",
    "SpecError",
    "Symlink",
    "SyscallError",
    "UidsExhaustedError",
]

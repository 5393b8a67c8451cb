"""Entering the build's namespaces and fixing who it is inside them.

The ids are written by the sandbox process itself: mapping only its own host
uid and gid needs no privilege, and it works identically for the root launcher
(which switched to the build's host uid first) and for an ordinary user.
"""

import contextlib
import os

from sandbox.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)

_USER_LIMITS = "/proc/sys/user"


def flags(network: bool) -> int:
    """Everything Nix isolates; the host network is kept only when asked for."""
    value = (
        CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP
    )
    if not network:
        value |= CLONE_NEWNET
    return value


def map_ids(inside_uid: int, host_uid: int, inside_gid: int, host_gid: int) -> None:
    """Map exactly one uid and one gid; everything else shows as nobody inside.

    setgroups must be denied before an unprivileged gid_map write, which also
    keeps the build from dropping a supplementary group to dodge a deny ACL.
    """
    with open("/proc/self/setgroups", "w") as handle:
        handle.write("deny")
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(f"{inside_uid} {host_uid} 1\n")
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(f"{inside_gid} {host_gid} 1\n")


def forbid_new_namespaces() -> None:
    """Make every further unshare or clone of a namespace fail inside the build.

    The per-user-namespace counters are the kernel's own switch; the build
    lacks the capability to raise them again.
    """
    for name in os.listdir(_USER_LIMITS):
        if name.startswith("max_") and name.endswith("_namespaces"):
            with contextlib.suppress(OSError), open(f"{_USER_LIMITS}/{name}", "w") as handle:
                handle.write("0")

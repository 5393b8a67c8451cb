"""Entering the build's namespaces and fixing who it is inside them.

The ids are written by the sandbox process itself: mapping only its own host
uid and gid needs no privilege, and it works identically for the root launcher
(which switched to the build's host uid first) and for an ordinary user.
"""

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

_MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"


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
    _write_proc("/proc/self/setgroups", "deny")
    _write_proc("/proc/self/uid_map", f"{inside_uid} {host_uid} 1\n")
    _write_proc("/proc/self/gid_map", f"{inside_gid} {host_gid} 1\n")


def forbid_new_namespaces() -> None:
    """Make every further unshare or clone of a namespace fail inside the build.

    The build has no capability in its user namespace, and every other kind of
    namespace needs CAP_SYS_ADMIN; only a nested user namespace could give it
    one. Its per-namespace limit is the kernel's own switch, and the build
    cannot raise it again.
    """
    _write_proc(_MAX_USER_NAMESPACES, "0")


def _write_proc(path: str, text: str) -> None:
    """Write ``text`` with a single write(2), as the id maps require.

    A bare descriptor also spares PID 1 the buffered file's extra system
    calls while the client waits for the build to start.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

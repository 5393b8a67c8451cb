"""Shedding every privilege before the build command runs.

The build is an ordinary uid inside its user namespace, so execve would already
clear its capabilities; the bounding set, no_new_privs and an empty ambient set
make sure no setuid or file-capability binary can give any back.
"""

import os
import resource
import signal

import prctl

from sandbox import syscalls

_FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets, so nothing executed later regains any."""
    prctl.capbset.limit()
    syscalls.clear_ambient_capabilities()


def forbid_privilege_gain() -> None:
    prctl.set_no_new_privs(1)


def hide_from_build() -> None:
    """Refuse ptrace and /proc access from the build, which runs as our uid.

    The sandbox's own processes keep capabilities and descriptors the build must
    never borrow; a non-dumpable process can only be inspected by a holder of
    CAP_SYS_PTRACE in the initial namespace.
    """
    prctl.set_dumpable(False)


def allow_id_mapping() -> None:
    """setuid made us non-dumpable, which hides /proc/self/uid_map from us."""
    prctl.set_dumpable(True)


def die_with_parent() -> None:
    prctl.set_pdeathsig(signal.SIGKILL)


def set_rlimits(cpu_time: float | None, processes: int | None) -> None:
    """Per-process kernel limits, set on PID 1 so the command inherits them.

    ``processes`` is only passed when there is no pids cgroup: RLIMIT_NPROC
    counts the processes of the build's uid inside its own user namespace, so it
    caps the whole build (PID 1 included, hence the extra one).
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cpu_time is not None:
        seconds = max(1, int(cpu_time + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes + 1, processes + 1))


def forwarded_signals() -> tuple[signal.Signals, ...]:
    return _FORWARDED


def close_fds_except(*keep: int) -> None:
    """Leave nothing open the build could inherit, apart from ``keep``."""
    limit = os.sysconf("SC_OPEN_MAX")
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, limit)

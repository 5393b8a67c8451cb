"""The last steps in the forked child before it becomes the build command."""

import os
import signal
from typing import NoReturn

from sandbox import privileges
from sandbox.spec import SandboxSpec

EXEC_FAILED = 127


def exec_command(
    spec: SandboxSpec, log_fd: int, error_fd: int, rlimit_processes: bool, rlimit_memory: bool
) -> NoReturn:
    """Become the build; on failure report errno through ``error_fd`` and exit.

    ``error_fd`` is close-on-exec, so the parent reading EOF means the exec
    succeeded and reading bytes means it did not.
    """
    try:
        for sig in (*privileges.forwarded_signals(), signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        privileges.close_fds_except(error_fd)
        os.umask(0o022)
        limits = spec.limits
        privileges.set_rlimits(
            limits.cpu_time,
            limits.processes + 2 if rlimit_processes and limits.processes else None,
            limits.memory if rlimit_memory else None,
        )
        privileges.forbid_privilege_gain()
        privileges.drop_all_capabilities()
        privileges.die_with_parent()
        os.execvpe(spec.argv[0], spec.argv, dict(spec.env))
    except BaseException as exc:
        message = f"cannot run {spec.argv[0]!r}: {exc}".encode()
        try:
            os.write(error_fd, message[:1000])
        finally:
            os._exit(EXEC_FAILED)

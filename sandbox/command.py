"""Starting the build command from PID 1.

posix_spawn (vfork and exec in the C library) avoids copying PID 1's whole
Python heap just to exec. Everything the command must inherit that posix_spawn
cannot set (umask, rlimits, no_new_privs, the emptied capability bounding set)
is already set on PID 1 itself.
"""

import contextlib
import os
import resource
import signal

from sandbox import privileges
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

EXEC_FAILED = 127


class ExecError(SandboxError):
    """The command could not be started; the message is reported as the result error."""


def spawn_command(spec: SandboxSpec, log_fd: int, rlimit_memory: bool) -> int:
    program = _resolve(spec)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, log_fd, 2),
    ]
    defaults = {*privileges.forwarded_signals(), signal.SIGPIPE, signal.SIGXFSZ}
    try:
        pid = os.posix_spawn(
            program,
            spec.argv,
            dict(spec.env),
            file_actions=actions,
            setsid=True,
            setsigmask=(),
            setsigdef=defaults,
        )
    except OSError as exc:
        raise ExecError(f"cannot run {spec.argv[0]!r}: {exc.strerror}") from exc
    if rlimit_memory and spec.limits.memory is not None:
        # Only the fallback without a memory cgroup: PID 1 cannot carry this
        # limit itself, so it is applied right after the exec.
        limit = spec.limits.memory
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
    return pid


def _resolve(spec: SandboxSpec) -> str:
    """Search PATH from the build's environment, not from PID 1's."""
    name = spec.argv[0]
    if "/" in name:
        return name
    path = spec.env.get("PATH", "")
    text = path.decode(errors="surrogateescape") if isinstance(path, bytes) else path
    for directory in text.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise ExecError(f"cannot run {name!r}: not found in PATH")

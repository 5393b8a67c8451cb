"""PID 1 of the build's PID namespace, from the launcher's clone to the command.

Run by a root launcher, it builds the root filesystem with full host privileges
(so it can read inputs in directories only root may traverse), mounts /proc for
its PID namespace, then becomes the build's unprivileged host uid and creates
the user namespace, in which every mount made before is locked. Run by an
ordinary user, it starts in a new user namespace and builds the root there.

It then starts the command, forwards termination signals to it, reaps every
orphan, and when the command exits kills whatever it left running: once PID 1
exits the kernel removes the whole namespace, so a daemonised process cannot
outlive the build.
"""

import contextlib
import json
import os
import resource
import select
import signal
import socket
from dataclasses import dataclass
from typing import Any, NoReturn

from sandbox import command, copyout, identity, mounts, namespaces, netns, privileges, syscalls
from sandbox.spec import SandboxSpec
from sandbox.syscalls import CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER


@dataclass(frozen=True)
class InitJob:
    spec: SandboxSpec
    root: str
    log_fd: int
    status_fd: int
    go_fd: int
    """Readable once the launcher has put us in our cgroup; EOF if it died."""
    host_ids: tuple[int, int]
    """Host uid and gid the build runs as."""
    rootful: bool
    """The launcher is root: switch to ``host_ids`` and create the user namespace."""
    rlimit_processes: bool
    rlimit_memory: bool
    loopback_request: bytes


def clone_flags(rootful: bool) -> int:
    """A root launcher creates the user namespace later, after building the root."""
    return CLONE_NEWPID if rootful else CLONE_NEWPID | CLONE_NEWUSER


def report(status_fd: int, message: dict[str, Any]) -> None:
    """One JSON line per message; short enough for an atomic pipe write."""
    os.write(status_fd, json.dumps(message).encode() + b"\n")


def run_init(job: InitJob) -> NoReturn:
    try:
        os.setsid()
        privileges.close_fds_except(job.log_fd, job.status_fd, job.go_fd)
        privileges.die_with_parent()
        if os.read(job.go_fd, 1) != b"1":
            os._exit(1)
        copy_out = _prepare(job)
        status = _supervise(job)
        if copy_out and "exit_code" in status:
            for scratch, fd in zip(job.spec.scratch, copy_out, strict=True):
                copyout.copy_tree(scratch.target, fd)
        report(job.status_fd, status)
        os._exit(0)
    except BaseException as exc:
        try:
            report(job.status_fd, {"error": f"sandbox setup: {exc}"})
        finally:
            os._exit(1)


def _prepare(job: InitJob) -> list[int]:
    spec = job.spec
    uid, gid = job.host_ids
    if job.rootful:
        syscalls.unshare(CLONE_NEWNS)
        layout = mounts.build_root(job.root, spec, owner=job.host_ids)
        copy_out = _open_copy_out(spec, job.host_ids)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        privileges.allow_id_mapping()
        privileges.die_with_parent()
        _check_launcher(job.go_fd)
        syscalls.unshare(namespaces.flags(spec.network) & ~CLONE_NEWPID)
        namespaces.map_ids(spec.uid, uid, spec.gid, gid)
    else:
        namespaces.map_ids(spec.uid, uid, spec.gid, gid)
        syscalls.unshare(namespaces.flags(spec.network) & ~(CLONE_NEWPID | CLONE_NEWUSER))
        layout = mounts.build_root(job.root, spec, owner=None)
        copy_out = _open_copy_out(spec, None)
    report(job.status_fd, {"mountpoints": layout.mountpoints})
    mounts.enter_root(job.root)
    socket.sethostname(identity.HOSTNAME)
    syscalls.setdomainname(identity.DOMAINNAME)
    if not spec.network:
        netns.bring_up_loopback(job.loopback_request)
    namespaces.forbid_new_namespaces()
    os.chdir(spec.cwd)
    os.umask(0o022)
    privileges.set_rlimits(
        spec.limits.cpu_time, spec.limits.processes if job.rlimit_processes else None
    )
    privileges.drop_capabilities()
    privileges.forbid_privilege_gain()
    privileges.hide_from_build()
    return copy_out


def _check_launcher(go_fd: int) -> None:
    """The parent-death signal was reset by setuid; make sure we did not miss it."""
    readable, _, _ = select.select([go_fd], [], [], 0)
    if readable:
        os._exit(1)


def _open_copy_out(spec: SandboxSpec, owner: tuple[int, int] | None) -> list[int]:
    """Hold the host scratch dirs open so they can be filled after pivot_root."""
    if spec.limits.scratch_bytes is None:
        return []
    fds = []
    for scratch in spec.scratch:
        fd = os.open(scratch.host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if owner is not None:
            os.fchown(fd, *owner)
        fds.append(fd)
    return fds


def _supervise(job: InitJob) -> dict[str, Any]:
    child = 0

    def forward(signum: int, _frame: object) -> None:
        if child:
            os.kill(child, signum)

    for sig in privileges.forwarded_signals():
        signal.signal(sig, forward)
    try:
        child = command.spawn_command(job.spec, job.log_fd, job.rlimit_memory)
    except command.ExecError as exc:
        return {"exit_code": command.EXEC_FAILED, "error": str(exc)}
    finally:
        os.close(job.log_fd)
    while True:
        pid, wait_status, _ = os.wait4(-1, 0)
        if pid == child:
            break
    if os.WIFSIGNALED(wait_status):
        status: dict[str, Any] = {"signal": os.WTERMSIG(wait_status)}
    else:
        status = {"exit_code": os.WEXITSTATUS(wait_status)}
    _kill_leftovers()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    status["rusage"] = {"user": children.ru_utime, "system": children.ru_stime}
    if job.spec.limits.scratch_bytes is not None:
        status["scratch_full"] = _scratch_full()
    return status


def _kill_leftovers() -> None:
    """SIGKILL everything else in the namespace, then reap it all."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.wait4(-1, 0)
        except ChildProcessError:
            return


def _scratch_full() -> bool:
    info = os.statvfs("/tmp")
    return info.f_bavail * info.f_frsize < 64 * 1024

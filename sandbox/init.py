"""PID 1 of the build's PID namespace, from the launcher's clone to the command.

Run by a root launcher, it builds the root filesystem and enters it with full
host privileges (so it can read inputs in directories only root may traverse),
then becomes the build's unprivileged host uid and creates the user namespace
that maps it to the build user; the build holds no capability over any of the
other namespaces, which belong to the initial user namespace. Run by an
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

from sandbox import (
    command,
    copyout,
    identity,
    mounts,
    namespaces,
    netns,
    privileges,
    syscalls,
)
from sandbox.cgroups import BuildCgroup
from sandbox.errors import SetupError
from sandbox.fdio import write_all
from sandbox.spec import SandboxSpec
from sandbox.syscalls import CLONE_NEWPID, CLONE_NEWUSER


@dataclass(frozen=True)
class InitSetup:
    """What PID 1 knows from birth; the spec itself arrives later on ``job_fd``.

    The launcher clones PID 1 ahead of demand, so the clone and the first
    copy-on-write faults are paid while it waits rather than while a client does.
    """

    root: str
    log_fd: int
    status_fd: int
    job_fd: int
    """Delivers one length-prefixed spec, then stays open: EOF means the launcher died."""
    cgroup: BuildCgroup | None
    """Joined by PID 1 itself: moving a process between cgroups can wait for an RCU
    grace period, and the launcher's single thread must not."""
    host_ids: tuple[int, int]
    """Host uid and gid the build runs as."""
    inside_ids: tuple[int, int]
    """The uid and gid inside that a rootless PID 1 maps before its spec arrives."""
    network: bool
    """Whether this PID 1 keeps the host network (else it makes its own, with lo)."""
    rootful: bool
    """The launcher is root: switch to ``host_ids`` and create the user namespace."""
    rlimit_processes: bool
    rlimit_memory: bool


def clone_flags(rootful: bool) -> int:
    """A root launcher creates the user namespace later, after building the root."""
    return CLONE_NEWPID if rootful else CLONE_NEWPID | CLONE_NEWUSER


def report(status_fd: int, message: dict[str, Any]) -> None:
    """One JSON line per message; the launcher gathers a long line over several reads."""
    os.write(status_fd, json.dumps(message).encode() + b"\n")


def send_spec(job_fd: int, payload: bytes) -> None:
    """Hand a spec (as JSON, already validated by the launcher) to a waiting PID 1."""
    write_all(job_fd, len(payload).to_bytes(4, "big") + payload)


def _receive_spec(job_fd: int) -> SandboxSpec:
    size = int.from_bytes(_read_exactly(job_fd, 4), "big")
    return SandboxSpec.from_json(_read_exactly(job_fd, size))


def _read_exactly(fd: int, size: int) -> bytearray:
    """Read into one buffer: the launcher waits on this pipe while a spec of many
    megabytes (large files or environment) arrives, so copying what has arrived
    on every read would hold up every other build for as long."""
    data = bytearray(size)
    received = 0
    with memoryview(data) as view:
        while received < size:
            count = os.readv(fd, [view[received:]])
            if not count:
                os._exit(1)
            received += count
    return data


def run_init(job: InitSetup) -> NoReturn:
    try:
        os.setsid()
        privileges.close_fds_except(job.log_fd, job.status_fd, job.job_fd)
        privileges.die_with_parent()
        if job.cgroup is not None:
            job.cgroup.attach(0)
        _before_spec(job)
        spec = _receive_spec(job.job_fd)
        if job.cgroup is not None:
            job.cgroup.set_limits(spec.limits.memory, _processes_limit(spec.limits.processes))
        copy_out = _after_spec(job, spec)
        status = _supervise(job, spec)
        if copy_out and "exit_code" in status:
            for scratch, fd in zip(spec.scratch, copy_out, strict=True):
                copyout.copy_tree(scratch.target, fd)
        report(job.status_fd, status)
        os._exit(0)
    except BaseException as exc:
        try:
            report(job.status_fd, {"error": f"sandbox setup: {exc}"})
        finally:
            os._exit(1)


def _processes_limit(processes: int | None) -> int | None:
    """The group's cap: PID 1 is in the group too.

    PID 1 writes its group's limits itself, before anything of the spec is
    set up and long before the command starts, rather than the launcher:
    the launcher serves every build on one thread, and these writes to the
    cgroup filesystem took a good part of its time per build.
    """
    return None if processes is None else processes + 1


def _before_spec(job: InitSetup) -> None:
    """Everything that does not depend on the spec, done while waiting for one.

    The launcher clones PIDs 1 for a profile (inside ids, network or not) and
    only hands one a spec that matches it. A root PID 1 creates these
    namespaces as real root; only the user namespace, which must come after
    the inputs are mounted, waits for the spec.
    """
    if not job.rootful:
        uid, gid = job.host_ids
        namespaces.map_ids(job.inside_ids[0], uid, job.inside_ids[1], gid)
    syscalls.unshare(namespaces.flags(job.network) & ~(CLONE_NEWPID | CLONE_NEWUSER))
    socket.sethostname(identity.HOSTNAME)
    syscalls.setdomainname(identity.DOMAINNAME)
    if not job.network:
        netns.bring_up_loopback()
    mounts.prepare_root(job.root, job.inside_ids, job.network)


def _after_spec(job: InitSetup, spec: SandboxSpec) -> list[int]:
    if spec.network != job.network or (not job.rootful and (spec.uid, spec.gid) != job.inside_ids):
        raise SetupError("the spec does not match what this PID 1 was prepared for")
    owner = job.host_ids if job.rootful else None
    layout = mounts.RootLayout()
    try:
        mounts.populate_root(job.root, spec, owner, layout, job.inside_ids)
    finally:
        # Only what needs undoing is reported: the launcher then wakes once
        # less in the usual run, whose targets the caller has made already.
        if layout.mountpoints:
            report(job.status_fd, {"mountpoints": layout.mountpoints})
    copy_out = _open_copy_out(spec, owner)
    mounts.enter_root(job.root)
    if job.rootful:
        uid, gid = job.host_ids
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        privileges.allow_id_mapping()
        privileges.die_with_parent()
        _check_launcher(job.job_fd)
        syscalls.unshare(CLONE_NEWUSER)
        namespaces.map_ids(spec.uid, uid, spec.gid, gid)
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


def _check_launcher(job_fd: int) -> None:
    """The parent-death signal was reset by setuid; make sure we did not miss it."""
    readable, _, _ = select.select([job_fd], [], [], 0)
    if readable:
        os._exit(1)


def _open_copy_out(spec: SandboxSpec, owner: tuple[int, int] | None) -> list[int]:
    """Hold the host scratch dirs open so they can be filled after pivot_root."""
    if spec.limits.scratch_bytes is None:
        return []
    fds = []
    for scratch in spec.scratch:
        fd = os.open(scratch.host, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if owner is not None:
            os.fchown(fd, *owner)
        fds.append(fd)
    return fds


def _supervise(job: InitSetup, spec: SandboxSpec) -> dict[str, Any]:
    child = 0
    early: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        # A signal can arrive before spawn_command's return value is stored.
        if child:
            os.kill(child, signum)
        else:
            early.append(signum)

    for sig in privileges.forwarded_signals():
        signal.signal(sig, forward)
    try:
        child = command.spawn_command(spec, job.log_fd, job.rlimit_memory)
    except command.ExecError as exc:
        return {"exit_code": command.EXEC_FAILED, "error": str(exc)}
    finally:
        os.close(job.log_fd)
    for signum in early:
        os.kill(child, signum)
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
    if spec.limits.scratch_bytes is not None:
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
    return info.f_bavail * info.f_frsize < 64 * 1024 or info.f_favail == 0

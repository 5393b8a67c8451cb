"""PID 1 of the build's PID namespace.

It finishes the isolation that must happen inside the namespace (/proc,
pivot_root, hostname, loopback), starts the command, forwards termination
signals to it, reaps every orphan, and when the command exits kills whatever it
left running: once PID 1 exits the kernel removes the whole namespace, so a
daemonised process cannot outlive the build.
"""

import contextlib
import json
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any, NoReturn

from sandbox import command, copyout, identity, mounts, namespaces, netns, privileges, syscalls
from sandbox.spec import SandboxSpec


@dataclass(frozen=True)
class InitJob:
    spec: SandboxSpec
    root: str
    log_fd: int
    status_fd: int
    copy_out_fds: list[int]
    rlimit_processes: bool
    rlimit_memory: bool


def report(status_fd: int, message: dict[str, Any]) -> None:
    """One JSON line per message; short enough for an atomic pipe write."""
    os.write(status_fd, json.dumps(message).encode() + b"\n")


def run_init(job: InitJob) -> NoReturn:
    try:
        privileges.die_with_parent()
        _isolate(job.spec, job.root)
        status = _supervise(job)
        if job.copy_out_fds and "exit_code" in status:
            _copy_out(job)
        report(job.status_fd, status)
        os._exit(0)
    except BaseException as exc:
        try:
            report(job.status_fd, {"error": f"sandbox init: {exc}"})
        finally:
            os._exit(1)


def _isolate(spec: SandboxSpec, root: str) -> None:
    mounts.enter_root(root)
    socket.sethostname(identity.HOSTNAME)
    syscalls.setdomainname(identity.DOMAINNAME)
    if not spec.network:
        netns.bring_up_loopback()
    namespaces.forbid_new_namespaces()
    os.chdir(spec.cwd)
    privileges.drop_bounding_set()
    privileges.forbid_privilege_gain()
    privileges.hide_from_build()


def _supervise(job: InitJob) -> dict[str, Any]:
    child = 0

    def forward(signum: int, _frame: object) -> None:
        if child:
            os.kill(child, signum)

    for sig in privileges.forwarded_signals():
        signal.signal(sig, forward)
    error_r, error_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(error_r)
        command.exec_command(
            job.spec, job.log_fd, error_w, job.rlimit_processes, job.rlimit_memory
        )
    os.close(error_w)
    os.close(job.log_fd)
    failure = _read_all(error_r)
    status: dict[str, Any] = {}
    while True:
        pid, wait_status, _ = os.wait4(-1, 0)
        if pid == child:
            break
    if failure:
        status = {"exit_code": command.EXEC_FAILED, "error": failure.decode(errors="replace")}
    elif os.WIFSIGNALED(wait_status):
        status = {"signal": os.WTERMSIG(wait_status)}
    else:
        status = {"exit_code": os.WEXITSTATUS(wait_status)}
    _kill_leftovers()
    if job.spec.limits.scratch_bytes is not None:
        status["scratch_full"] = _scratch_full()
    return status


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


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


def _copy_out(job: InitJob) -> None:
    for scratch, fd in zip(job.spec.scratch, job.copy_out_fds, strict=True):
        copyout.copy_tree(scratch.target, fd)

"""The sandbox process: from the launcher's fork to the build's PID 1.

Run as root, it builds the root filesystem with full host privileges (so it can
read inputs in directories only root may traverse), then becomes the build's
unprivileged host uid and creates the user namespace, in which every mount made
before is locked. Run as an ordinary user, it creates the user namespace first
and builds the root inside it. Either way it then forks PID 1 and waits for it,
so that a parent-death signal chain reaches the build if the launcher dies.
"""

import os
from dataclasses import dataclass
from typing import NoReturn

import prctl

from sandbox import mounts, namespaces, privileges, syscalls
from sandbox.cgroups import BuildCgroup
from sandbox.init import InitJob, report, run_init
from sandbox.spec import SandboxSpec
from sandbox.syscalls import CLONE_NEWNS


@dataclass(frozen=True)
class SpawnJob:
    spec: SandboxSpec
    root: str
    launcher_pid: int
    log_fd: int
    status_fd: int
    cgroup: BuildCgroup | None
    host_ids: tuple[int, int] | None
    """Host uid and gid to become (root launcher); ``None`` when rootless."""


def run_sandbox_process(job: SpawnJob) -> NoReturn:
    try:
        _run(job)
    except BaseException as exc:
        try:
            report(job.status_fd, {"error": f"sandbox setup: {exc}"})
        finally:
            os._exit(1)
    os._exit(0)


def _run(job: SpawnJob) -> None:
    os.setsid()
    privileges.close_fds_except(job.log_fd, job.status_fd)
    privileges.die_with_parent()
    if os.getppid() != job.launcher_pid:
        os._exit(1)
    if job.cgroup is not None:
        job.cgroup.attach(os.getpid())
    spec = job.spec
    copy_out: list[int] = []
    if job.host_ids is not None:
        uid, gid = job.host_ids
        syscalls.unshare(CLONE_NEWNS)
        layout = mounts.build_root(job.root, spec, owner=job.host_ids)
        copy_out = _open_copy_out(spec, job.host_ids)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        prctl.set_dumpable(True)
        privileges.die_with_parent()
        if os.getppid() != job.launcher_pid:
            os._exit(1)
        namespaces.enter(spec.network)
        namespaces.map_ids(spec.uid, uid, spec.gid, gid)
    else:
        uid, gid = os.geteuid(), os.getegid()
        copy_out = _open_copy_out(spec, None)
        namespaces.enter(spec.network)
        namespaces.map_ids(spec.uid, uid, spec.gid, gid)
        layout = mounts.build_root(job.root, spec, owner=None)
    report(job.status_fd, {"mountpoints": layout.mountpoints})
    init_job = InitJob(
        spec=spec,
        root=job.root,
        log_fd=job.log_fd,
        status_fd=job.status_fd,
        copy_out_fds=copy_out,
        rlimit_processes=job.cgroup is None or not job.cgroup.controls_pids,
        rlimit_memory=job.cgroup is None or not job.cgroup.controls_memory,
    )
    pid = os.fork()
    if pid == 0:
        run_init(init_job)
    privileges.hide_from_build()
    os.close(job.log_fd)
    for fd in copy_out:
        os.close(fd)
    report(job.status_fd, {"init_pid": pid})
    os.close(job.status_fd)
    while True:
        waited, _ = os.waitpid(pid, 0)
        if waited == pid:
            return


def _open_copy_out(spec: SandboxSpec, owner: tuple[int, int] | None) -> list[int]:
    """Hold the host scratch dirs open so PID 1 can fill them after pivot_root."""
    if spec.limits.scratch_bytes is None:
        return []
    fds = []
    for scratch in spec.scratch:
        fd = os.open(scratch.host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if owner is not None:
            os.fchown(fd, *owner)
        fds.append(fd)
    return fds

"""PIDs 1 cloned ahead of demand, and the host uid and cgroup each one holds.

A run should only pay for what depends on its spec, so the launcher keeps a
few PIDs 1 already cloned, each with its uid claimed and its cgroup made. The
pool is the one owner of those claims: whatever it hands out comes back to it
through ``release`` when the run ends.

A PID 1 is cloned for a profile (the ids a rootless one maps, and whether it
keeps the host network) and can take only a spec of that profile. The pool
keeps spares for the default profile, and for every other profile one of the
latest runs asked for: a builder that fetches (fixed-output derivations keep
the network) would otherwise clone a PID 1 while each such build waits.
"""

import contextlib
import gc
import os
import signal
from dataclasses import dataclass

from sandbox import syscalls
from sandbox.cgroups import BuildCgroup, CgroupHost
from sandbox.errors import SandboxError, UidsExhaustedError
from sandbox.init import InitSetup, clone_flags, run_init, send_spec
from sandbox.spec import BUILD_GID, BUILD_UID, SandboxSpec
from sandbox.uids import UidPool

_DEFAULT_IDS = (BUILD_UID, BUILD_GID)
#: A profile other than the default keeps its spares while one of this many
#: latest runs asked for it.
REMEMBERED_RUNS = 100


@dataclass(frozen=True)
class Profile:
    """What a PID 1 fixes before its spec arrives, so what a spec must match."""

    inside_ids: tuple[int, int]
    network: bool


DEFAULT_PROFILE = Profile(_DEFAULT_IDS, network=False)


class Demand:
    """The profiles spares are kept for: the default one, and those recent runs asked for."""

    def __init__(self, remembered_runs: int = REMEMBERED_RUNS) -> None:
        self.remembered_runs = remembered_runs
        self.runs = 0
        # The run count at which each profile was last asked for.
        self.last_asked: dict[Profile, int] = {DEFAULT_PROFILE: 0}

    def ask(self, profile: Profile) -> None:
        self.runs += 1
        self.last_asked[profile] = self.runs

    def wanted(self) -> list[Profile]:
        """The latest asked for first, so that a refill serves what is likely to come next."""
        for profile, run in list(self.last_asked.items()):
            if profile != DEFAULT_PROFILE and self.runs - run >= self.remembered_runs:
                del self.last_asked[profile]
        return sorted(self.last_asked, key=self.last_asked.__getitem__, reverse=True)


@dataclass
class Spare:
    """A PID 1 cloned ahead of demand, blocked until it is sent a spec."""

    pid: int
    log_fd: int
    status_fd: int
    job_fd: int
    cgroup: BuildCgroup | None
    host_uid: int | None
    profile: Profile


@dataclass(frozen=True)
class CloneContext:
    """What every PID 1 inherits from the launcher, prepared once."""

    staging: str
    rootful: bool


class SparePool:
    def __init__(
        self, size: int, context: CloneContext, cgroups: CgroupHost, uids: UidPool | None
    ) -> None:
        self.size = size
        self.context = context
        self.cgroups = cgroups
        self.uids = uids
        self.spares: list[Spare] = []
        self.closed = False
        self.demand = Demand()

    def launch(self, spec: SandboxSpec, payload: bytes) -> Spare:
        """A PID 1 that has been sent the spec; a fresh one if the first cannot take it.

        PID 1 sets its group's limits from the spec itself (``init``), off
        this process's one thread.
        """
        self.demand.ask(self._profile((spec.uid, spec.gid), spec.network))
        spare = self._take(spec)
        try:
            send_spec(spare.job_fd, payload)
        except OSError:
            self.discard(spare)
            spare = self.make((spec.uid, spec.gid), spec.network)
            send_spec(spare.job_fd, payload)
        return spare

    def _profile(self, ids: tuple[int, int], network: bool) -> Profile:
        """A root PID 1 maps ids only once the spec arrives, so for it only the network counts."""
        return Profile(_DEFAULT_IDS if self.context.rootful else ids, network)

    def _take(self, spec: SandboxSpec) -> Spare:
        """The oldest spare prepared for the spec's profile, or a new one."""
        ids = (spec.uid, spec.gid)
        profile = self._profile(ids, spec.network)
        for index, spare in enumerate(self.spares):
            if spare.profile == profile:
                return self.spares.pop(index)
        while True:
            try:
                return self.make(ids, spec.network)
            except UidsExhaustedError:
                # An idle spare of another profile may hold the last free uid.
                if not self.spares:
                    raise
                self.discard(self.spares.pop(0))

    def refill(self) -> None:
        """Clone the next PIDs 1 now, so that runs do not wait for them.

        Called when a run has finished rather than when one starts, so that
        the clone does not compete with a starting build for the CPU. Keeping
        more than one per profile gives each spare time to join its cgroup
        (which can take an RCU grace period) before a spec reaches it. The
        profile asked for last is refilled first; spares of a profile no
        recent run asked for are let go, with the uids they hold.
        """
        wanted = self.demand.wanted()
        for spare in [s for s in self.spares if s.profile not in wanted]:
            self.spares.remove(spare)
            self.discard(spare)
        for profile in wanted:
            while not self.closed and sum(s.profile == profile for s in self.spares) < self.size:
                try:
                    self.spares.append(self.make(profile.inside_ids, profile.network))
                except (SandboxError, OSError):
                    return

    def make(self, inside_ids: tuple[int, int], network: bool) -> Spare:
        context = self.context
        host_uid = self.uids.claim() if self.uids is not None else None
        try:
            cgroup = self.cgroups.create()
        except OSError:
            self.release(None, host_uid)
            raise
        host_ids = (os.geteuid(), os.getegid())
        if host_uid is not None:
            host_ids = (host_uid, host_uid)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        # Builds reopen their output through /dev/stdout, which checks the
        # pipe's owner and mode like a file's.
        os.fchown(log_w, *host_ids)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        job_r, job_w = os.pipe2(os.O_CLOEXEC)
        setup = InitSetup(
            root=context.staging,
            log_fd=log_w,
            status_fd=status_w,
            job_fd=job_r,
            cgroup=cgroup,
            host_ids=host_ids,
            inside_ids=inside_ids,
            network=network,
            rootful=context.rootful,
            rlimit_processes=cgroup is None or not cgroup.controls_pids,
            rlimit_memory=cgroup is None or not cgroup.controls_memory,
        )
        gc.freeze()
        try:
            pid = syscalls.clone(clone_flags(context.rootful))
        except SandboxError:
            for fd in (log_r, log_w, status_r, status_w, job_r, job_w):
                os.close(fd)
            self.release(cgroup, host_uid)
            raise
        if pid == 0:
            gc.disable()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            run_init(setup)
        for fd in (job_r, log_w, status_w):
            os.close(fd)
        profile = self._profile(inside_ids, network)
        return Spare(pid, log_r, status_r, job_w, cgroup, host_uid, profile)

    def discard(self, spare: Spare) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(spare.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        self._close(spare)

    def forget(self, pid: int) -> None:
        """A spare that exited before getting a spec; the next run gets a fresh one."""
        for spare in [s for s in self.spares if s.pid == pid]:
            self.spares.remove(spare)
            self._close(spare)

    def _close(self, spare: Spare) -> None:
        for fd in (spare.log_fd, spare.status_fd, spare.job_fd):
            os.close(fd)
        self.release(spare.cgroup, spare.host_uid)

    def release(self, cgroup: BuildCgroup | None, host_uid: int | None) -> None:
        if cgroup is not None:
            cgroup.remove()
        if host_uid is not None and self.uids is not None:
            self.uids.release(host_uid)

    def drain(self) -> None:
        """Discard every spare and clone no more: the launcher is closing."""
        self.closed = True
        for spare in self.spares:
            self.discard(spare)
        self.spares.clear()

    def close(self) -> None:
        self.drain()
        self.cgroups.close()
        if self.uids is not None:
            self.uids.close()

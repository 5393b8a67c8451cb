"""Turning kernel bookkeeping into the figures a result reports.

CPU times come from the rusage PID 1 collected for every process it reaped,
which leaves out the sandbox's own setup. When PID 1 was killed before it could
report (a limit the launcher enforces, such as CPU time summed over the
cgroup, can strike first), the cgroup's accounting of every process stands in,
and without a cgroup the launcher's rusage of PID 1; both include the setup. Peak memory
comes from the build's cgroup. Without a memory cgroup the launcher samples the
build's processes instead (ru_maxrss cannot serve: a process started with
vfork inherits the high-water mark of its parent's address space), so the
figure is a lower bound and the memory limit is only per process (RLIMIT_AS);
the result lists it in ``unenforced_limits``.

``result`` assembles what a run reports once PID 1 is reaped and its pipes are
closed, from these figures and what the launcher saw along the way.
"""

import contextlib
import resource
import signal
from dataclasses import dataclass

from sandbox.cgroups import BuildCgroup, CgroupStats
from sandbox.result import CANCELLED, Limit, SandboxResult
from sandbox.run import Run
from sandbox.spec import Limits

#: Without a memory cgroup a process stopped by RLIMIT_AS peaks a little below
#: the limit; this fraction of it counts as having reached the limit.
RLIMIT_MEMORY_REACHED = 0.8
#: Without a pids cgroup the process count is sampled; processes come and go
#: while a build hammers RLIMIT_NPROC, so a sample this close counts as a hit.
PROCESSES_REACHED = 0.9


@dataclass
class Usage:
    user_time: float
    system_time: float
    peak_memory: int | None
    cgroup: CgroupStats


@dataclass
class TreeSample:
    """One look at the build's processes, for builds without a cgroup."""

    processes: int
    rss: int


def _usage(
    reported: dict[str, float] | None,
    rusage: resource.struct_rusage | None,
    cgroup: BuildCgroup | None,
    sampled_peak: int,
    limits: Limits,
) -> Usage:
    stats = CgroupStats()
    if cgroup is not None:
        stats = cgroup.stats(limits.memory is not None, limits.processes is not None)
    times = cgroup.cpu_times() if cgroup is not None and reported is None else None
    if reported is not None:
        user, system = reported["user"], reported["system"]
    elif times is not None:
        user, system = times
    elif rusage is not None:
        user, system = rusage.ru_utime, rusage.ru_stime
    else:
        user, system = 0.0, 0.0
    peak = stats.peak_memory if stats.peak_memory is not None else sampled_peak
    return Usage(user, system, peak, stats)


def sample_tree(init_pid: int) -> TreeSample:
    """Count PID 1 and its descendants and sum the descendants' resident memory.

    PID 1 is the sandbox's own Python process; its memory is not the build's.
    Only a host without a memory cgroup samples, so only its launcher pays for
    importing psutil, and not before the first sample.
    """
    import psutil

    try:
        children = psutil.Process(init_pid).children(recursive=True)
    except psutil.Error:
        return TreeSample(0, 0)
    rss = 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            rss += child.memory_info().rss
    return TreeSample(1 + len(children), rss)


def _limits_reached(limits: Limits, used: Usage, sig: int | None, memory_cgroup: bool) -> set[str]:
    """Limits the kernel's own counters show the build ran into."""
    reached: set[str] = set()
    if limits.memory is not None:
        near_rlimit = (
            not memory_cgroup
            and used.peak_memory is not None
            and used.peak_memory >= RLIMIT_MEMORY_REACHED * limits.memory
        )
        if used.cgroup.oom_killed or near_rlimit:
            reached.add(Limit.MEMORY)
    if used.cgroup.pids_limited:
        reached.add(Limit.PROCESSES)
    cpu_used = used.user_time + used.system_time
    cpu_killed = sig in (signal.SIGXCPU, signal.SIGKILL)
    if cpu_killed and limits.cpu_time is not None and cpu_used >= limits.cpu_time * 0.9:
        reached.add(Limit.CPU_TIME)
    return reached


def _fatal_limit(reached: set[str], sig: int | None) -> str | None:
    """The limit that killed a command the sandbox itself did not stop."""
    if sig == signal.SIGXCPU:
        return Limit.CPU_TIME
    if sig != signal.SIGKILL:
        return None
    for limit in (Limit.MEMORY, Limit.CPU_TIME):
        if limit in reached:
            return limit
    return None


def result(run: Run) -> SandboxResult:
    """What a finished run reports; reads its cgroup, so call it before removing that."""
    limits = run.spec.limits
    status = run.status
    used = _usage(status.get("rusage"), run.rusage, run.cgroup, run.sampled_peak, limits)
    reported = SandboxResult(
        exit_code=status.get("exit_code"),
        signal=status.get("signal"),
        stopped_by=run.stopped_by,
        wall_time=run.wall_time,
        user_time=used.user_time,
        system_time=used.system_time,
        peak_memory=used.peak_memory,
        log=bytes(run.log),
        log_truncated=run.truncated,
        error=status.get("error"),
    )
    if reported.exit_code is None and reported.signal is None and run.stopped_by is not None:
        reported.signal = signal.SIGKILL
    memory_cgroup = run.cgroup is not None and run.cgroup.controls_memory
    reached = _limits_reached(limits, used, reported.signal, memory_cgroup)
    reached |= run.reached
    if status.get("scratch_full"):
        reached.add(Limit.SCRATCH_BYTES)
    if run.stopped_by is not None and run.stopped_by != CANCELLED:
        reached.add(run.stopped_by)
    if reported.stopped_by is None:
        reported.stopped_by = _fatal_limit(reached, reported.signal)
        if reported.stopped_by is not None:
            reached.add(reported.stopped_by)
    reported.limits_reached = sorted(reached)
    reported.unenforced_limits = _unenforced(run)
    return reported


def _unenforced(run: Run) -> list[str]:
    limits = run.spec.limits
    cgroup = run.cgroup
    missing = []
    if limits.memory is not None and (cgroup is None or not cgroup.controls_memory):
        missing.append(Limit.MEMORY.value)
    if limits.cpu_time is not None and (cgroup is None or not cgroup.accounts_cpu):
        missing.append(Limit.CPU_TIME.value)
    return missing

"""Turning kernel bookkeeping into the figures a result reports.

CPU times come from the rusage of the sandbox process, which includes every
descendant PID 1 reaped. Peak memory comes from the build's cgroup when there
is one; without it, the largest single process (ru_maxrss) is the best the
kernel can tell, and the report says so through ``unenforced_limits``.
"""

import resource
import signal
from dataclasses import dataclass

import psutil

from sandbox.cgroups import BuildCgroup, CgroupStats
from sandbox.result import Limit
from sandbox.spec import Limits

#: Without a memory cgroup a process stopped by RLIMIT_AS peaks a little below
#: the limit; this fraction of it counts as having reached the limit.
RLIMIT_MEMORY_REACHED = 0.8


@dataclass
class Usage:
    user_time: float
    system_time: float
    peak_memory: int | None
    cgroup: CgroupStats


def usage(rusage: resource.struct_rusage | None, cgroup: BuildCgroup | None) -> Usage:
    stats = cgroup.stats() if cgroup is not None else CgroupStats()
    user = rusage.ru_utime if rusage else 0.0
    system = rusage.ru_stime if rusage else 0.0
    peak = stats.peak_memory
    if peak is None and rusage is not None:
        peak = rusage.ru_maxrss * 1024
    return Usage(user, system, peak, stats)


def process_count(init_pid: int) -> int:
    """Processes in the build, for reporting a process cap hit without a cgroup."""
    try:
        return 1 + len(psutil.Process(init_pid).children(recursive=True))
    except psutil.Error:
        return 0


def limits_reached(limits: Limits, used: Usage, sig: int | None, memory_cgroup: bool) -> set[str]:
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


def fatal_limit(reached: set[str], sig: int | None) -> str | None:
    """The limit that killed a command the sandbox itself did not stop."""
    if sig == signal.SIGXCPU:
        return Limit.CPU_TIME
    if sig != signal.SIGKILL:
        return None
    for limit in (Limit.MEMORY, Limit.CPU_TIME):
        if limit in reached:
            return limit
    return None

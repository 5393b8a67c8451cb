"""Turning kernel bookkeeping into the figures a result reports.

CPU times come from the rusage of the sandbox process, which includes every
descendant PID 1 reaped. Peak memory comes from the build's cgroup when there
is one; without it, the largest single process (ru_maxrss) is the best the
kernel can tell, and the report says so through ``unenforced_limits``.
"""

import resource
from dataclasses import dataclass

import psutil

from sandbox.cgroups import BuildCgroup, CgroupStats

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

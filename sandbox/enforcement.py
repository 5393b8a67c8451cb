"""The limits the launcher enforces itself: wall time, silence, log size, sampled usage.

The kernel enforces what a cgroup or rlimit can; the rest needs the launcher
to look at the clock, count log bytes or, where a cgroup cannot do it, poll
the build's CPU time and processes. The launcher's event loop sleeps until
the next of these deadlines (``timeout``) and then calls ``enforce``.
"""

import contextlib
import os
import signal

from sandbox import accounting
from sandbox.result import Limit
from sandbox.run import Run

_POLL_INTERVAL = 0.1
#: Output still in the pipes of a reaped PID 1 is read for at most this long,
#: so that a pipe held open elsewhere cannot keep the result back.
_EXIT_GRACE = 2.0


def timeout(runs: list[Run], now: float) -> float | None:
    """Seconds until the earliest deadline of any run; None when there is none."""
    deadlines = []
    for run in runs:
        limits = run.spec.limits
        if run.reaped_at is not None:
            deadlines.append(run.reaped_at + _EXIT_GRACE)
            continue
        if limits.wall_time is not None:
            deadlines.append(run.started + limits.wall_time)
        if limits.silence is not None:
            deadlines.append(run.last_output + limits.silence)
        if _needs_polling(run):
            deadlines.append(run.next_poll)
    if not deadlines:
        return None
    return max(0.0, min(deadlines) - now)


def enforce(run: Run, now: float) -> None:
    """Kill a running build that is past a deadline, and poll it when due."""
    limits = run.spec.limits
    if limits.wall_time is not None and now - run.started >= limits.wall_time:
        kill(run, Limit.WALL_TIME)
    if limits.silence is not None and now - run.last_output >= limits.silence:
        kill(run, Limit.SILENCE)
    if _needs_polling(run) and now >= run.next_poll:
        run.next_poll = now + _POLL_INTERVAL
        _poll(run)


def exit_grace_over(run: Run, now: float) -> bool:
    assert run.reaped_at is not None
    return now - run.reaped_at >= _EXIT_GRACE


def accept_log(run: Run, data: bytes, now: float) -> bytes:
    """The part of a log chunk within the log size limit; the build dies past it."""
    run.last_output = now
    limit = run.spec.limits.log_bytes
    if limit is not None and len(run.log) + len(data) > limit:
        data = data[: max(0, limit - len(run.log))]
        run.truncated = True
        kill(run, Limit.LOG_BYTES)
    return data


def kill(run: Run, reason: str) -> None:
    """Kill the build (the first reason is the one reported); a no-op once it has exited."""
    if run.stopped_by is None and run.reaped_at is None:
        run.stopped_by = reason
    if run.reaped_at is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(run.pid, signal.SIGKILL)
    if run.cgroup is not None:
        run.cgroup.kill()


def _needs_polling(run: Run) -> bool:
    return _polls_cpu_time(run) or _samples_tree(run)


def _polls_cpu_time(run: Run) -> bool:
    """The cgroup's total is the only build-wide CPU time (RLIMIT_CPU is per process)."""
    cgroup = run.cgroup
    return run.spec.limits.cpu_time is not None and cgroup is not None and cgroup.accounts_cpu


def _samples_tree(run: Run) -> bool:
    """Without both a pids and a memory controller, usage is sampled from the process tree."""
    cgroup = run.cgroup
    return cgroup is None or not (cgroup.controls_pids and cgroup.controls_memory)


def _poll(run: Run) -> None:
    limits = run.spec.limits
    if limits.cpu_time is not None and run.cgroup is not None:
        used = run.cgroup.cpu_time()
        if used is not None and used > limits.cpu_time:
            kill(run, Limit.CPU_TIME)
    if _samples_tree(run):
        sample = accounting.sample_tree(run.pid)
        run.sampled_peak = max(run.sampled_peak, sample.rss)
        near = accounting.PROCESSES_REACHED * limits.processes if limits.processes else 0
        if limits.processes is not None and sample.processes - 1 >= near:
            run.reached.add(Limit.PROCESSES)

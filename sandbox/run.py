"""A build the launcher has handed to a PID 1, from dispatch until its result is sent."""

import resource
from dataclasses import dataclass, field
from typing import Any

from sandbox.cgroups import BuildCgroup
from sandbox.spec import SandboxSpec


@dataclass
class Run:
    run_id: int
    spec: SandboxSpec
    pid: int
    log_fd: int
    status_fd: int
    lifeline_fd: int
    """Write end of the job pipe, held open so PID 1 can tell we are alive."""
    cgroup: BuildCgroup | None
    host_uid: int | None
    started: float
    last_output: float
    log: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    stopped_by: str | None = None
    reached: set[str] = field(default_factory=set)
    status: dict[str, Any] = field(default_factory=dict)
    status_buffer: bytearray = field(default_factory=bytearray)
    mountpoints: list[tuple[str, int]] = field(default_factory=list)
    rusage: resource.struct_rusage | None = None
    reaped_at: float | None = None
    wall_time: float = 0.0
    next_poll: float = 0.0
    sampled_peak: int = 0

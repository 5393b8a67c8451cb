"""One control group per build: the kernel enforces memory and process caps on
the build as a whole, accounts its CPU and peak memory, and lets the launcher
find every process of the build when it has to kill it.

cgroup v2 is used when the launcher's own cgroup can delegate the memory and
pids controllers; otherwise the v1 memory, pids and cpuacct hierarchies. When
neither is writable (an ordinary user without delegation) there is no group and
the caller falls back to per-process rlimits, reporting what it lost.
"""

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "pids", "cpuacct")
_PREFIX = "sandbox-"


@dataclass
class CgroupStats:
    peak_memory: int | None = None
    oom_killed: bool = False
    pids_limited: bool = False


class BuildCgroup:
    """The group (one directory per v1 controller, or one v2 directory) of a build."""

    def __init__(self, dirs: dict[str, Path], unified: bool) -> None:
        self.dirs = dirs
        self.unified = unified

    @property
    def controls_memory(self) -> bool:
        return "memory" in self.dirs

    @property
    def controls_pids(self) -> bool:
        return "pids" in self.dirs

    @property
    def accounts_cpu(self) -> bool:
        return "cpuacct" in self.dirs

    def set_limits(self, memory: int | None, processes: int | None) -> None:
        if self.unified:
            base = self.dirs["memory"]
            if memory is not None:
                _write(base / "memory.max", memory)
                _write(base / "memory.swap.max", 0, optional=True)
            if processes is not None:
                _write(base / "pids.max", processes)
            return
        if memory is not None and self.controls_memory:
            mem = self.dirs["memory"]
            _write(mem / "memory.limit_in_bytes", memory)
            _write(mem / "memory.memsw.limit_in_bytes", memory, optional=True)
        if processes is not None and self.controls_pids:
            _write(self.dirs["pids"] / "pids.max", processes)

    def attach(self, pid: int) -> None:
        """Move ``pid`` (0: the caller) in before it forks, so every descendant is born inside."""
        for path in set(self.dirs.values()):
            _write(path / "cgroup.procs", pid)

    def stats(self, memory_limited: bool, processes_limited: bool) -> CgroupStats:
        """Peak memory always; limit counters only for limits that were set."""
        memory = self.dirs.get("memory")
        pids = self.dirs.get("pids")
        if self.unified:
            assert memory is not None
            return CgroupStats(
                peak_memory=_read_int(memory / "memory.peak"),
                oom_killed=memory_limited
                and _keyed(memory / "memory.events").get("oom_kill", 0) > 0,
                pids_limited=processes_limited and _keyed(memory / "pids.events").get("max", 0) > 0,
            )
        stats = CgroupStats()
        if memory is not None:
            stats.peak_memory = _read_int(memory / "memory.max_usage_in_bytes")
            if memory_limited:
                oom = _keyed(memory / "memory.oom_control")
                if "oom_kill" in oom:
                    stats.oom_killed = oom["oom_kill"] > 0
                else:
                    stats.oom_killed = (_read_int(memory / "memory.failcnt") or 0) > 0
        if pids is not None and processes_limited:
            stats.pids_limited = _keyed(pids / "pids.events").get("max", 0) > 0
        return stats

    def cpu_time(self) -> float | None:
        if self.unified:
            usec = _keyed(self.dirs["memory"] / "cpu.stat").get("usage_usec")
            return None if usec is None else usec / 1e6
        if self.accounts_cpu:
            ns = _read_int(self.dirs["cpuacct"] / "cpuacct.usage")
            return None if ns is None else ns / 1e9
        return None

    def cpu_times(self) -> tuple[float, float] | None:
        """User and system seconds of every process the build ran, PID 1 included."""
        if self.unified:
            stat = _keyed(self.dirs["memory"] / "cpu.stat")
            if "user_usec" not in stat or "system_usec" not in stat:
                return None
            return stat["user_usec"] / 1e6, stat["system_usec"] / 1e6
        if self.accounts_cpu:
            stat = _keyed(self.dirs["cpuacct"] / "cpuacct.stat")
            if "user" not in stat or "system" not in stat:
                return None
            ticks = os.sysconf("SC_CLK_TCK")
            return stat["user"] / ticks, stat["system"] / ticks
        return None

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every member; v1 needs a loop because members may still fork."""
        if self.unified and (self.dirs["memory"] / "cgroup.kill").exists():
            _write(self.dirs["memory"] / "cgroup.kill", 1)
            return
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self, timeout: float = 5.0) -> bool:
        """Delete the directories; members may take a moment to be fully reaped."""
        deadline = time.monotonic() + timeout
        remaining = set(self.dirs.values())
        while remaining:
            for path in list(remaining):
                try:
                    path.rmdir()
                    remaining.discard(path)
                except FileNotFoundError:
                    remaining.discard(path)
                except OSError:
                    pass
            if not remaining or time.monotonic() > deadline:
                break
            self.kill()
            time.sleep(0.01)
        return not remaining


class CgroupHost:
    """Where this launcher may create build groups, decided once at start-up."""

    def __init__(self, parents: dict[str, Path], unified: bool) -> None:
        self.parents = parents
        self.unified = unified
        self._counter = 0

    @classmethod
    def detect(cls, owner_pid: int) -> "CgroupHost":
        """Prefer v2 with memory and pids, then v1, then nothing."""
        own = _own_cgroups()
        unified = _detect_unified(own.get(""), owner_pid)
        if unified is not None:
            return cls({"memory": unified, "pids": unified, "cpuacct": unified}, True)
        parents: dict[str, Path] = {}
        for controller in _V1_CONTROLLERS:
            mount = _v1_mount(controller)
            if mount is None or controller not in own:
                continue
            base = mount / own[controller].lstrip("/")
            if not os.access(base, os.W_OK):
                continue
            parent = base / f"{_PREFIX}{owner_pid}"
            _sweep_stale(base)
            try:
                parent.mkdir(exist_ok=True)
            except OSError:
                continue
            parents[controller] = parent
        return cls(parents, False)

    def create(self) -> BuildCgroup | None:
        if not self.parents:
            return None
        self._counter += 1
        dirs: dict[str, Path] = {}
        made: dict[Path, Path] = {}
        for controller, parent in self.parents.items():
            if parent not in made:
                path = parent / f"build-{self._counter}"
                path.mkdir()
                made[parent] = path
            dirs[controller] = made[parent]
        return BuildCgroup(dirs, self.unified)

    def close(self) -> None:
        for parent in set(self.parents.values()):
            for child in parent.glob("build-*"):
                BuildCgroup({"x": child}, self.unified).remove(timeout=1.0)
            with contextlib.suppress(OSError):
                parent.rmdir()


def _own_cgroups() -> dict[str, str]:
    """Map each v1 controller (and "" for v2) to this process's cgroup path."""
    result: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(","):
            result[name] = path
    return result


def _unified_mount() -> Path | None:
    for candidate in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if (candidate / "cgroup.controllers").exists():
            return candidate
    return None


def _detect_unified(own: str | None, owner_pid: int) -> Path | None:
    mount = _unified_mount()
    if mount is None or own is None:
        return None
    base = mount / own.lstrip("/")
    try:
        available = set((base / "cgroup.controllers").read_text().split())
    except OSError:
        return None
    if not {"memory", "pids"} <= available or not os.access(base, os.W_OK):
        return None
    enabled = set((base / "cgroup.subtree_control").read_text().split())
    if not {"memory", "pids"} <= enabled:
        try:
            _write(base / "cgroup.subtree_control", "+memory +pids")
        except OSError:
            return None
    _sweep_stale(base)
    parent = base / f"{_PREFIX}{owner_pid}"
    try:
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", "+memory +pids")
        if "cpu" in available:
            _write(parent / "cgroup.subtree_control", "+cpu", optional=True)
    except OSError:
        with contextlib.suppress(OSError):
            parent.rmdir()
        return None
    return parent


def _v1_mount(controller: str) -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[2] == "cgroup" and controller in parts[3].split(","):
            return Path(parts[1])
    return None


def _sweep_stale(base: Path) -> None:
    """Remove groups left by launchers that were killed before cleaning up."""
    for parent in base.glob(f"{_PREFIX}*"):
        match = re.fullmatch(rf"{_PREFIX}(\d+)", parent.name)
        if match is None or Path(f"/proc/{match.group(1)}").exists():
            continue
        for child in parent.glob("build-*"):
            BuildCgroup({"x": child}, False).remove(timeout=1.0)
        with contextlib.suppress(OSError):
            parent.rmdir()


def _write(path: Path, value: object, optional: bool = False) -> None:
    """One write(2) on a bare descriptor: a run sets its limits and reads its
    counters on the way to and from the build, and a buffered text file costs
    several more system calls per control file than the value itself."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError:
        if not optional:
            raise


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _read_int(path: Path) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in _read(path).splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
    return values

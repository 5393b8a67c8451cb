"""The launcher process: a single-threaded fork server for sandboxes.

Clients (such as a multi-threaded gRPC server) must never fork themselves, so
they start this process once and send it specs over a socket. It has already
imported everything a sandbox needs, keeps a few PIDs 1 cloned ahead of demand
(see init.py), hands each run to one, and multiplexes logs, timers and exits
with one selector. It also owns cleanup: when its client disappears it kills
every build and removes every cgroup and directory it made before exiting.
"""

import contextlib
import gc
import json
import os
import resource
import selectors
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import accounting, hostpaths, netns, protocol, seccomp, syscalls
from sandbox.cgroups import BuildCgroup, CgroupHost
from sandbox.errors import SandboxError, UidsExhaustedError
from sandbox.init import InitSetup, clone_flags, run_init, send_spec
from sandbox.protocol import Kind
from sandbox.result import CANCELLED, Limit, SandboxResult
from sandbox.spec import BUILD_GID, BUILD_UID, SandboxSpec
from sandbox.uids import UidPool

_POLL_INTERVAL = 0.1
_EXIT_GRACE = 2.0
_READ_SIZE = 1 << 16
_ROOT_PREFIX = "sandbox-root-"
_DEFAULT_IDS = (BUILD_UID, BUILD_GID)


@dataclass(frozen=True)
class Settings:
    uid_base: int
    uid_count: int
    use_cgroups: bool
    spares: int
    uid_lock_dir: str


@dataclass
class _Spare:
    """A PID 1 cloned ahead of demand, blocked until it is sent a spec."""

    pid: int
    log_fd: int
    status_fd: int
    job_fd: int
    cgroup: BuildCgroup | None
    host_uid: int | None
    inside_ids: tuple[int, int]
    network: bool


@dataclass
class _Run:
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


class ForkServer:
    def __init__(self, sock: socket.socket, settings: Settings) -> None:
        self.sock = sock
        self.settings = settings
        self.rootful = os.geteuid() == 0
        self.uids = (
            UidPool(settings.uid_base, settings.uid_count, settings.uid_lock_dir)
            if self.rootful
            else None
        )
        self.pid = os.getpid()
        self.loopback_request = netns.encode_in_child()
        seccomp.confine_self(seccomp.compile_filter())
        self.cgroups = (
            CgroupHost.detect(self.pid) if settings.use_cgroups else CgroupHost({}, False)
        )
        _sweep_stale_roots()
        self.staging = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{self.pid}-")
        os.chmod(self.staging, 0o755)
        self.runs: dict[int, _Run] = {}
        self.by_fd: dict[int, _Run] = {}
        self.by_pid: dict[int, _Run] = {}
        self.selector = selectors.DefaultSelector()
        self.reader = protocol.FrameReader()
        self.closing = False
        self.spares: list[_Spare] = []

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_r, selectors.EVENT_READ)
        self.selector.register(self.sock, selectors.EVENT_READ)
        try:
            self._refill()
            self._send(Kind.READY, 0, json.dumps(self._describe()).encode())
            while not (self.closing and not self.runs):
                for key, _ in self.selector.select(self._timeout()):
                    if key.fileobj is self.sock:
                        self._on_client()
                    elif key.fd == wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                    else:
                        self._on_pipe(key.fd)
                self._reap()
                self._tick()
        finally:
            for run in list(self.runs.values()):
                self._kill(run, CANCELLED)
            for spare in self.spares:
                self._discard(spare)
            self.cgroups.close()
            if self.uids is not None:
                self.uids.close()
            with contextlib.suppress(OSError):
                os.rmdir(self.staging)

    def _describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "rootful": self.rootful,
            "cgroups": sorted(self.cgroups.parents),
            "cgroup_v2": self.cgroups.unified,
            "cgroup_parents": sorted({str(p) for p in self.cgroups.parents.values()}),
            "root_dir": self.staging,
        }

    def _send(self, kind: Kind, run_id: int, payload: bytes = b"") -> None:
        if self.closing:
            return
        try:
            self.sock.sendall(protocol.pack(kind, run_id, payload))
        except OSError:
            self._start_closing()

    def _start_closing(self) -> None:
        if self.closing:
            return
        self.closing = True
        for spare in self.spares:
            self._discard(spare)
        self.spares.clear()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        for run in self.runs.values():
            self._kill(run, CANCELLED)

    def _on_client(self) -> None:
        try:
            frames = protocol.receive(self.sock, self.reader)
        except (SandboxError, OSError):
            self._start_closing()
            return
        for kind, run_id, payload in frames:
            if kind is Kind.RUN:
                self._start(run_id, payload)
            elif kind is Kind.CANCEL and run_id in self.runs:
                self._kill(self.runs[run_id], CANCELLED)

    def _start(self, run_id: int, payload: bytes) -> None:
        try:
            spec = SandboxSpec.from_json(payload)
            spec.validate()
            spare = self._take_spare(spec)
            try:
                self._dispatch(spare, spec, payload)
            except OSError:
                self._discard(spare)
                spare = self._make_spare((spec.uid, spec.gid), spec.network)
                self._dispatch(spare, spec, payload)
        except UidsExhaustedError as exc:
            self._send(Kind.UIDS_EXHAUSTED, run_id, str(exc).encode())
            return
        except (SandboxError, OSError) as exc:
            self._send(Kind.REJECTED, run_id, str(exc).encode())
            return
        now = time.monotonic()
        run = _Run(
            run_id,
            spec,
            spare.pid,
            spare.log_fd,
            spare.status_fd,
            spare.job_fd,
            spare.cgroup,
            spare.host_uid,
            now,
            now,
        )
        self.runs[run_id] = run
        self.by_pid[run.pid] = run
        for fd in (run.log_fd, run.status_fd):
            os.set_blocking(fd, False)
            self.by_fd[fd] = run
            self.selector.register(fd, selectors.EVENT_READ)

    def _dispatch(self, spare: _Spare, spec: SandboxSpec, payload: bytes) -> None:
        if spare.cgroup is not None:
            spare.cgroup.set_limits(spec.limits.memory, _with_margin(spec.limits.processes))
        send_spec(spare.job_fd, payload)

    def _take_spare(self, spec: SandboxSpec) -> _Spare:
        """The oldest spare prepared for the spec's profile, or a new one.

        Spares are made for the common case (build user 1000/100, no network);
        a root PID 1 maps ids only after the spec arrives, so for it the
        network alone decides.
        """
        ids = (spec.uid, spec.gid)
        for index, spare in enumerate(self.spares):
            if spare.network == spec.network and (self.rootful or spare.inside_ids == ids):
                return self.spares.pop(index)
        while True:
            try:
                return self._make_spare(ids, spec.network)
            except UidsExhaustedError:
                # An idle spare of another profile may hold the last free uid.
                if not self.spares:
                    raise
                self._discard(self.spares.pop(0))

    def _refill(self) -> None:
        """Clone the next PIDs 1 now, so that runs do not wait for them.

        Called when a run has finished rather than when one starts, so that
        the clone does not compete with a starting build for the CPU. Keeping
        more than one gives each spare time to join its cgroup (which can take
        an RCU grace period) before a spec reaches it.
        """
        while len(self.spares) < self.settings.spares and not self.closing:
            try:
                self.spares.append(self._make_spare(_DEFAULT_IDS, network=False))
            except (SandboxError, OSError):
                return

    def _make_spare(self, inside_ids: tuple[int, int], network: bool) -> _Spare:
        host_uid = self.uids.claim() if self.uids is not None else None
        try:
            cgroup = self.cgroups.create()
        except OSError:
            self._release(None, host_uid)
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
            root=self.staging,
            log_fd=log_w,
            status_fd=status_w,
            job_fd=job_r,
            cgroup=cgroup,
            host_ids=host_ids,
            inside_ids=inside_ids,
            network=network,
            rootful=self.rootful,
            rlimit_processes=cgroup is None or not cgroup.controls_pids,
            rlimit_memory=cgroup is None or not cgroup.controls_memory,
            loopback_request=self.loopback_request,
        )
        gc.freeze()
        try:
            pid = syscalls.clone(clone_flags(self.rootful))
        except SandboxError:
            for fd in (log_r, log_w, status_r, status_w, job_r, job_w):
                os.close(fd)
            self._release(cgroup, host_uid)
            raise
        if pid == 0:
            gc.disable()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            run_init(setup)
        for fd in (job_r, log_w, status_w):
            os.close(fd)
        return _Spare(pid, log_r, status_r, job_w, cgroup, host_uid, inside_ids, network)

    def _discard(self, spare: _Spare) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(spare.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        self._close_spare(spare)

    def _close_spare(self, spare: _Spare) -> None:
        for fd in (spare.log_fd, spare.status_fd, spare.job_fd):
            os.close(fd)
        self._release(spare.cgroup, spare.host_uid)

    def _release(self, cgroup: BuildCgroup | None, host_uid: int | None) -> None:
        if cgroup is not None:
            cgroup.remove()
        if host_uid is not None and self.uids is not None:
            self.uids.release(host_uid)

    def _on_pipe(self, fd: int) -> None:
        run = self.by_fd[fd]
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(run, fd)
            return
        if fd == run.log_fd:
            self._on_log(run, data)
        else:
            self._on_status(run, data)

    def _close_pipe(self, run: _Run, fd: int) -> None:
        self.selector.unregister(fd)
        del self.by_fd[fd]
        os.close(fd)
        if fd == run.log_fd:
            run.log_fd = -1
        else:
            run.status_fd = -1

    def _on_log(self, run: _Run, data: bytes) -> None:
        run.last_output = time.monotonic()
        limit = run.spec.limits.log_bytes
        if limit is not None and len(run.log) + len(data) > limit:
            data = data[: max(0, limit - len(run.log))]
            run.truncated = True
            self._kill(run, Limit.LOG_BYTES)
        if data:
            run.log += data
            self._send(Kind.LOG, run.run_id, data)

    def _on_status(self, run: _Run, data: bytes) -> None:
        """Parse the complete lines; a long one is gathered without copying it once per chunk."""
        end = data.rfind(b"\n")
        if end < 0:
            run.status_buffer += data
            return
        run.status_buffer += data[:end]
        lines = run.status_buffer.split(b"\n")
        run.status_buffer = bytearray(data[end + 1 :])
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "mountpoints" in message:
                run.mountpoints = [
                    (str(path), int(levels)) for path, levels in message["mountpoints"]
                ]
            else:
                run.status.update(message)

    def _reap(self) -> None:
        while True:
            try:
                pid, _, rusage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is not None:
                run.rusage = rusage
                run.reaped_at = time.monotonic()
                run.wall_time = run.reaped_at - run.started
            for spare in [s for s in self.spares if s.pid == pid]:
                # It failed before getting a spec; the next run gets a fresh one.
                self.spares.remove(spare)
                self._close_spare(spare)

    def _timeout(self) -> float | None:
        deadlines = []
        for run in self.runs.values():
            limits = run.spec.limits
            if run.reaped_at is not None:
                deadlines.append(run.reaped_at + _EXIT_GRACE)
                continue
            if limits.wall_time is not None:
                deadlines.append(run.started + limits.wall_time)
            if limits.silence is not None:
                deadlines.append(run.last_output + limits.silence)
            if self._needs_polling(run):
                deadlines.append(run.next_poll)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _needs_polling(self, run: _Run) -> bool:
        limits = run.spec.limits
        if limits.cpu_time is not None and run.cgroup is not None and run.cgroup.accounts_cpu:
            return True
        return run.cgroup is None or not (run.cgroup.controls_pids and run.cgroup.controls_memory)

    def _tick(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            limits = run.spec.limits
            if run.reaped_at is None:
                if limits.wall_time is not None and now - run.started >= limits.wall_time:
                    self._kill(run, Limit.WALL_TIME)
                if limits.silence is not None and now - run.last_output >= limits.silence:
                    self._kill(run, Limit.SILENCE)
                if self._needs_polling(run) and now >= run.next_poll:
                    run.next_poll = now + _POLL_INTERVAL
                    self._poll(run)
            elif now - run.reaped_at >= _EXIT_GRACE:
                for fd in (run.log_fd, run.status_fd):
                    if fd >= 0:
                        self._close_pipe(run, fd)
            if run.reaped_at is not None and run.log_fd < 0 and run.status_fd < 0:
                self._finish(run)

    def _poll(self, run: _Run) -> None:
        limits = run.spec.limits
        if limits.cpu_time is not None and run.cgroup is not None:
            used = run.cgroup.cpu_time()
            if used is not None and used > limits.cpu_time:
                self._kill(run, Limit.CPU_TIME)
        if run.cgroup is None or not (run.cgroup.controls_pids and run.cgroup.controls_memory):
            sample = accounting.sample_tree(run.pid)
            run.sampled_peak = max(run.sampled_peak, sample.rss)
            near = accounting.PROCESSES_REACHED * limits.processes if limits.processes else 0
            if limits.processes is not None and sample.processes - 1 >= near:
                run.reached.add(Limit.PROCESSES)

    def _kill(self, run: _Run, reason: str) -> None:
        if run.stopped_by is None and run.reaped_at is None:
            run.stopped_by = reason
        if run.reaped_at is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
        if run.cgroup is not None:
            run.cgroup.kill()

    def _finish(self, run: _Run) -> None:
        del self.runs[run.run_id]
        os.close(run.lifeline_fd)
        usage = accounting.usage(
            run.status.get("rusage"), run.rusage, run.cgroup, run.sampled_peak, run.spec.limits
        )
        if run.mountpoints:
            self._remove_mountpoints(run)
        self._release(run.cgroup, run.host_uid)
        result = self._result(run, usage)
        self._send(Kind.RESULT, run.run_id, result.to_json().encode())
        self._refill()

    def _result(self, run: _Run, usage: accounting.Usage) -> SandboxResult:
        limits = run.spec.limits
        status = run.status
        result = SandboxResult(
            exit_code=status.get("exit_code"),
            signal=status.get("signal"),
            stopped_by=run.stopped_by,
            wall_time=run.wall_time,
            user_time=usage.user_time,
            system_time=usage.system_time,
            peak_memory=usage.peak_memory,
            log=bytes(run.log),
            log_truncated=run.truncated,
            error=status.get("error"),
        )
        if result.exit_code is None and result.signal is None and run.stopped_by is not None:
            result.signal = signal.SIGKILL
        memory_cgroup = run.cgroup is not None and run.cgroup.controls_memory
        reached = accounting.limits_reached(limits, usage, result.signal, memory_cgroup)
        reached |= run.reached
        if status.get("scratch_full"):
            reached.add(Limit.SCRATCH_BYTES)
        if run.stopped_by is not None and run.stopped_by != CANCELLED:
            reached.add(run.stopped_by)
        if result.stopped_by is None:
            result.stopped_by = accounting.fatal_limit(reached, result.signal)
            if result.stopped_by is not None:
                reached.add(result.stopped_by)
        result.limits_reached = sorted(reached)
        result.unenforced_limits = self._unenforced(run)
        return result

    def _unenforced(self, run: _Run) -> list[str]:
        limits = run.spec.limits
        missing = []
        if limits.memory is not None and (run.cgroup is None or not run.cgroup.controls_memory):
            missing.append(Limit.MEMORY.value)
        if limits.cpu_time is not None and (run.cgroup is None or not run.cgroup.accounts_cpu):
            missing.append(Limit.CPU_TIME.value)
        return missing

    def _remove_mountpoints(self, run: _Run) -> None:
        """Delete the empty mount targets the sandbox had to create in host scratch.

        The build may have replaced any directory on the way with a symlink to
        a host directory holding entries of the same names, so each is reached
        from the scratch dir's descriptor without following symlinks.
        """
        if run.spec.limits.scratch_bytes is not None:
            return
        for path, levels in reversed(run.mountpoints):
            for scratch in run.spec.scratch:
                if path.startswith(scratch.target + "/"):
                    hostpaths.remove_created(scratch.host, path[len(scratch.target) :], levels)


def _sweep_stale_roots() -> None:
    """Remove root mount points left by launchers that were SIGKILLed.

    They are empty on the host: every mount on them lived in a sandbox's own
    mount namespace.
    """
    for path in Path(tempfile.gettempdir()).glob(f"{_ROOT_PREFIX}*-*"):
        pid = path.name[len(_ROOT_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                path.rmdir()


def _with_margin(processes: int | None) -> int | None:
    """The sandbox's PID 1 is in the group too."""
    return None if processes is None else processes + 1


def main(argv: list[str]) -> None:
    fd = int(argv[1])
    settings = Settings(
        uid_base=int(argv[2]),
        uid_count=int(argv[3]),
        use_cgroups=argv[4] == "1",
        spares=int(argv[5]),
        uid_lock_dir=argv[6],
    )
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    try:
        server = ForkServer(sock, settings)
    except SandboxError as exc:
        sock.sendall(protocol.pack(Kind.START_FAILED, 0, str(exc).encode()))
        sys.exit(1)
    server.serve()


if __name__ == "__main__":
    main(sys.argv)

"""The launcher process: a single-threaded fork server for sandboxes.

Clients (such as a multi-threaded gRPC server) must never fork themselves, so
they start this process once and send it specs over a socket. It has already
imported everything a sandbox needs, hands each run to a PID 1 cloned ahead of
demand (spares.py, init.py), and multiplexes logs, timers and exits with one
selector; the limits it watches itself are in enforcement.py and the result it
reports is assembled by accounting.py. It also owns cleanup: when its client
disappears it kills every build and removes every cgroup and directory it made
before exiting.
"""

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import accounting, enforcement, hostpaths, protocol, seccomp
from sandbox.cgroups import CgroupHost
from sandbox.errors import SandboxError, UidsExhaustedError
from sandbox.protocol import Kind
from sandbox.result import CANCELLED
from sandbox.run import Run
from sandbox.spares import CloneContext, SparePool
from sandbox.spec import SandboxSpec
from sandbox.uids import UidPool

_READ_SIZE = 1 << 16
_ROOT_PREFIX = "sandbox-root-"


@dataclass(frozen=True)
class Settings:
    uid_base: int
    uid_count: int
    use_cgroups: bool
    spares: int
    uid_lock_dir: str


class ForkServer:
    def __init__(self, sock: socket.socket, settings: Settings) -> None:
        self.sock = sock
        self.rootful = os.geteuid() == 0
        uids = (
            UidPool(settings.uid_base, settings.uid_count, settings.uid_lock_dir)
            if self.rootful
            else None
        )
        self.pid = os.getpid()
        seccomp.confine_self(seccomp.compile_filter())
        cgroups = CgroupHost.detect(self.pid) if settings.use_cgroups else CgroupHost({}, False)
        _sweep_stale_roots()
        self.staging = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{self.pid}-")
        os.chmod(self.staging, 0o755)
        context = CloneContext(
            staging=self.staging,
            rootful=self.rootful,
        )
        self.spares = SparePool(settings.spares, context, cgroups, uids)
        self.runs: dict[int, Run] = {}
        self.by_fd: dict[int, Run] = {}
        self.by_pid: dict[int, Run] = {}
        self.selector = selectors.DefaultSelector()
        self.reader = protocol.FrameReader()
        self.closing = False

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_r, selectors.EVENT_READ)
        self.selector.register(self.sock, selectors.EVENT_READ)
        try:
            self.spares.refill()
            self._send(Kind.READY, 0, json.dumps(self._describe()).encode())
            while not (self.closing and not self.runs):
                timeout = enforcement.timeout(list(self.runs.values()), time.monotonic())
                for key, _ in self.selector.select(timeout):
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
                enforcement.kill(run, CANCELLED)
            self.spares.close()
            with contextlib.suppress(OSError):
                os.rmdir(self.staging)

    def _describe(self) -> dict[str, Any]:
        cgroups = self.spares.cgroups
        return {
            "pid": self.pid,
            "rootful": self.rootful,
            "cgroups": sorted(cgroups.parents),
            "cgroup_v2": cgroups.unified,
            "cgroup_parents": sorted({str(p) for p in cgroups.parents.values()}),
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
        self.spares.drain()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        for run in self.runs.values():
            enforcement.kill(run, CANCELLED)

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
                enforcement.kill(self.runs[run_id], CANCELLED)

    def _start(self, run_id: int, payload: bytes) -> None:
        try:
            spec = SandboxSpec.from_json(payload)
            spec.validate()
            spare = self.spares.launch(spec, payload)
        except UidsExhaustedError as exc:
            self._send(Kind.UIDS_EXHAUSTED, run_id, str(exc).encode())
            return
        except (SandboxError, OSError) as exc:
            self._send(Kind.REJECTED, run_id, str(exc).encode())
            return
        now = time.monotonic()
        run = Run(
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

    def _close_pipe(self, run: Run, fd: int) -> None:
        self.selector.unregister(fd)
        del self.by_fd[fd]
        os.close(fd)
        if fd == run.log_fd:
            run.log_fd = -1
        else:
            run.status_fd = -1

    def _on_log(self, run: Run, data: bytes) -> None:
        data = enforcement.accept_log(run, data, time.monotonic())
        if data:
            run.log += data
            self._send(Kind.LOG, run.run_id, data)

    def _on_status(self, run: Run, data: bytes) -> None:
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
            self.spares.forget(pid)

    def _tick(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.reaped_at is None:
                enforcement.enforce(run, now)
            elif enforcement.exit_grace_over(run, now):
                for fd in (run.log_fd, run.status_fd):
                    if fd >= 0:
                        self._close_pipe(run, fd)
            if run.reaped_at is not None and run.log_fd < 0 and run.status_fd < 0:
                self._finish(run)

    def _finish(self, run: Run) -> None:
        """Report a run once everything it held is back, then refill the spares.

        Cloning a spare takes a while and the client waits for nothing but the
        result, so the spares are refilled after it is sent; a client that has
        its result may see the launcher one spare short for a moment.
        """
        del self.runs[run.run_id]
        os.close(run.lifeline_fd)
        result = accounting.result(run)
        if run.mountpoints:
            self._remove_mountpoints(run)
        self.spares.release(run.cgroup, run.host_uid)
        self._send(Kind.RESULT, run.run_id, result.to_json().encode())
        self.spares.refill()

    def _remove_mountpoints(self, run: Run) -> None:
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
    # Everything the launcher holds is released by now; the client waits for
    # this exit, and the interpreter's own teardown would only add to it.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)

"""Client side of the launcher: safe to use from any thread of any process.

``Launcher.start`` spawns the fork server with subprocess (an exec, not a bare
fork of the caller), so a multi-threaded caller never duplicates its threads'
state. Runs are submitted over a socket; one reader thread delivers log chunks
to per-run callbacks and completes results. Cancelling is a message, so any
thread may do it.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import protocol
from sandbox.errors import LauncherError, SpecError, UidsExhaustedError
from sandbox.protocol import Kind
from sandbox.result import SandboxResult
from sandbox.spec import SandboxSpec
from sandbox.uids import DEFAULT_LOCK_DIR

LogCallback = Callable[[bytes], None]

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

#: Environment variables that set the defaults of the build uid range and its
#: lock directory, so that every launcher a process starts (or a command it
#: runs starts) can be moved to another range without code or options.
UID_BASE_VARIABLE = "SANDBOX_UID_BASE"
UID_COUNT_VARIABLE = "SANDBOX_UID_COUNT"
UID_LOCK_DIR_VARIABLE = "SANDBOX_UID_LOCK_DIR"
DEFAULT_UID_BASE = 2_000_000_000
DEFAULT_UID_COUNT = 1024


def _int_from_environment(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise LauncherError(f"${name} is {value!r}, not an integer") from None


@dataclass(frozen=True)
class LauncherConfig:
    """How to start the launcher process.

    ``uid_base``/``uid_count`` is the host uid range (gid equal to uid) handed
    out one per concurrent build when the launcher runs as root. ``python`` and
    ``python_path`` choose the interpreter and extra import paths for the
    launcher; ``user``/``group`` make a root caller start it as an ordinary user
    (rootless mode). ``spares`` PIDs 1 are cloned ahead of demand; each holds a
    uid from the range and an empty cgroup while it waits. ``uid_lock_dir``
    holds one lock file per uid of the range for a root launcher; launchers that
    share a range must share it. It is created 0700 if absent, and refused if it
    is a symlink, owned by another user or open to group or others. The three
    default to ``$SANDBOX_UID_BASE``, ``$SANDBOX_UID_COUNT`` and
    ``$SANDBOX_UID_LOCK_DIR`` when these are set.
    """

    uid_base: int = field(
        default_factory=lambda: _int_from_environment(UID_BASE_VARIABLE, DEFAULT_UID_BASE)
    )
    uid_count: int = field(
        default_factory=lambda: _int_from_environment(UID_COUNT_VARIABLE, DEFAULT_UID_COUNT)
    )
    use_cgroups: bool = True
    python: str = sys.executable
    python_path: tuple[str, ...] = ()
    user: int | None = None
    group: int | None = None
    start_timeout: float = 30.0
    spares: int = 2
    uid_lock_dir: str = field(
        default_factory=lambda: os.environ.get(UID_LOCK_DIR_VARIABLE, DEFAULT_LOCK_DIR)
    )


@dataclass
class LauncherInfo:
    """What the launcher found at start-up; the paths let operators (and tests)
    check that nothing is left behind."""

    pid: int
    rootful: bool
    cgroups: list[str]
    cgroup_v2: bool
    cgroup_parents: list[str]
    root_dir: str


# How often a wait without a timeout wakes up, so that signal handlers run.
_SIGNAL_POLL_SECONDS = 0.1


class RunHandle:
    """A submitted run: wait for its result or cancel it from any thread."""

    def __init__(self, launcher: "Launcher", run_id: int, on_log: LogCallback | None) -> None:
        self.run_id = run_id
        self._launcher = launcher
        self._on_log = on_log
        self._done = threading.Event()
        self._result: SandboxResult | None = None
        self._error: Exception | None = None
        self.callback_error: Exception | None = None

    def cancel(self) -> None:
        """Kill the whole build; its result reports ``stopped_by == "cancelled"``."""
        if not self._done.is_set():
            self._launcher._send(Kind.CANCEL, self.run_id)

    def wait(self, timeout: float | None = None) -> SandboxResult:
        if timeout is None:
            # Waiting in short steps lets the main thread run a signal handler
            # (Ctrl-C) even when the signal was delivered to another thread.
            while not self._done.wait(_SIGNAL_POLL_SECONDS):
                pass
        elif not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id} still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _log(self, data: bytes) -> None:
        """A failing callback loses its later chunks, never the run or other runs."""
        if self._on_log is None:
            return
        try:
            self._on_log(data)
        except Exception as exc:
            self.callback_error = exc
            self._on_log = None

    def _complete(self, result: SandboxResult | None, error: Exception | None) -> None:
        self._result = result
        self._error = error
        self._done.set()


@dataclass
class Launcher:
    """Owns one launcher process: start it once, share it between threads."""

    config: LauncherConfig = field(default_factory=LauncherConfig)
    info: LauncherInfo | None = None
    _process: subprocess.Popen[bytes] | None = None
    _sock: socket.socket | None = None
    _send_lock: threading.Lock = field(default_factory=threading.Lock)
    _state_lock: threading.Lock = field(default_factory=threading.Lock)
    _runs: dict[int, RunHandle] = field(default_factory=dict)
    _next_id: int = 1
    _reader: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _failure: str | None = None
    _watchdog: threading.Timer | None = None

    def start(self) -> "Launcher":
        """Spawn the launcher process and wait until it takes runs."""
        return self.spawn().wait_ready()

    def spawn(self) -> "Launcher":
        """Start the launcher process without waiting for it, so that its start overlaps other work.

        It forks, so a caller spawns it before starting threads of its own, as with ``start``.
        """
        if self._process is not None:
            return self
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = self.config
        env = dict(os.environ)
        paths = [_PACKAGE_ROOT, *cfg.python_path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        argv = [
            cfg.python,
            "-m",
            "sandbox.forkserver",
            str(theirs.fileno()),
            str(cfg.uid_base),
            str(cfg.uid_count),
            "1" if cfg.use_cgroups else "0",
            str(cfg.spares),
            cfg.uid_lock_dir,
        ]
        extra: dict[str, Any] = {}
        if cfg.user is not None:
            extra = {"user": cfg.user, "group": cfg.group, "extra_groups": []}
        try:
            self._process = subprocess.Popen(
                argv,
                pass_fds=(theirs.fileno(),),
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **extra,
            )
        except OSError as exc:
            raise LauncherError(f"cannot start launcher: {exc}") from exc
        finally:
            theirs.close()
        self._sock = ours
        self._reader = threading.Thread(
            target=self._read_loop, name="sandbox-launcher", daemon=True
        )
        self._reader.start()
        # Runs may be submitted before anyone waits for the start (or instead
        # of waiting), so the start timeout is kept here: a launcher hung in
        # its start-up fails them rather than leaving them queued for ever.
        self._watchdog = threading.Timer(cfg.start_timeout, self._start_overdue)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def _start_overdue(self) -> None:
        if self._ready.is_set():
            return
        self._fail_all(f"its start-up took longer than {self.config.start_timeout:g} s")
        process = self._process
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()

    def wait_ready(self) -> "Launcher":
        """Wait until the spawned launcher takes runs; stop it if it does not start."""
        if self._process is None:
            raise LauncherError("launcher was not spawned")
        if not self._ready.wait(self.config.start_timeout) or self.info is None:
            self.stop()
            raise LauncherError(f"launcher did not start: {self._failure or 'timeout'}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Close the channel; the launcher kills what still runs and cleans up."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        self._process = None
        self._sock = None

    def __enter__(self) -> "Launcher":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def submit(self, spec: SandboxSpec, on_log: LogCallback | None = None) -> RunHandle:
        """Start a run; ``on_log`` gets each output chunk on the reader thread."""
        spec.validate()
        with self._state_lock:
            if self._failure is not None:
                raise LauncherError(self._failure)
            run_id = self._next_id
            self._next_id += 1
            handle = RunHandle(self, run_id, on_log)
            self._runs[run_id] = handle
        self._send(Kind.RUN, run_id, spec.to_json().encode())
        return handle

    def run(
        self, spec: SandboxSpec, on_log: LogCallback | None = None, timeout: float | None = None
    ) -> SandboxResult:
        return self.submit(spec, on_log).wait(timeout)

    def _send(self, kind: Kind, run_id: int, payload: bytes = b"") -> None:
        if self._sock is None:
            raise LauncherError("launcher is not running")
        try:
            with self._send_lock:
                self._sock.sendall(protocol.pack(kind, run_id, payload))
        except OSError as exc:
            raise LauncherError(f"launcher unreachable: {exc}") from exc

    def _read_loop(self) -> None:
        reader = protocol.FrameReader()
        sock = self._sock
        assert sock is not None
        try:
            while True:
                for kind, run_id, payload in protocol.receive(sock, reader):
                    self._dispatch(kind, run_id, payload)
        except (OSError, LauncherError) as exc:
            self._fail_all(f"launcher went away: {exc}")

    def _dispatch(self, kind: Kind, run_id: int, payload: bytes) -> None:
        if kind is Kind.READY:
            self.info = LauncherInfo(**json.loads(payload))
            self._ready.set()
            return
        if kind is Kind.START_FAILED:
            self._fail_all(payload.decode(errors="replace"))
            return
        with self._state_lock:
            handle = self._runs.get(run_id)
            if kind in (Kind.RESULT, Kind.REJECTED, Kind.UIDS_EXHAUSTED):
                self._runs.pop(run_id, None)
        if handle is None:
            return
        if kind is Kind.LOG:
            handle._log(payload)
        elif kind is Kind.RESULT:
            handle._complete(SandboxResult.from_dict(json.loads(payload)), None)
        elif kind is Kind.REJECTED:
            handle._complete(None, SpecError(payload.decode()))
        elif kind is Kind.UIDS_EXHAUSTED:
            handle._complete(None, UidsExhaustedError(payload.decode()))

    def _fail_all(self, message: str) -> None:
        """The first cause is kept: a launcher that said why it stopped then closes."""
        with self._state_lock:
            self._failure = self._failure or message
            handles = list(self._runs.values())
            self._runs.clear()
        self._ready.set()
        for handle in handles:
            handle._complete(None, LauncherError(message))

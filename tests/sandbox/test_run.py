"""Running commands: results, logs, limits, scratch contents, cancellation."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox import (
    CANCELLED,
    Bind,
    File,
    Launcher,
    LauncherConfig,
    LauncherError,
    Limit,
    Limits,
    SandboxSpec,
    Scratch,
    SpecError,
    Symlink,
)

from .conftest import Sandboxes


def test_exit_code_and_log(sandbox: Sandboxes) -> None:
    result = sandbox.run("echo out; echo err >&2; exit 7")
    assert result.exit_code == 7
    assert result.signal is None
    assert result.stopped_by is None
    assert result.log == b"out\nerr\n"
    assert result.wall_time > 0


def test_killed_by_signal(sandbox: Sandboxes) -> None:
    result = sandbox.run("kill -SEGV $$")
    assert result.exit_code is None
    assert result.signal == signal.SIGSEGV


def test_exec_failure_is_reported(sandbox: Sandboxes) -> None:
    spec = sandbox.spec("")
    spec = type(spec)(argv=["/bin/does-not-exist"], ro_binds=spec.ro_binds)
    result = sandbox.launcher.run(spec)
    assert result.exit_code == 127
    assert result.error is not None and "does-not-exist" in result.error


def test_environment_passes_bytes_through(sandbox: Sandboxes) -> None:
    result = sandbox.run('printf %s "$RAW" | od -An -tx1', env={"RAW": b"\xff\xfeok"})
    assert result.log.split() == [b"ff", b"fe", b"6f", b"6b"]


def test_environment_is_exactly_the_spec(sandbox: Sandboxes) -> None:
    result = sandbox.run("env | sort", env={"ONLY": "this"})
    names = {line.split(b"=")[0] for line in result.log.splitlines()}
    assert names <= {b"ONLY", b"PATH", b"PWD", b"SHLVL"}


def test_log_callback_streams_chunks(sandbox: Sandboxes) -> None:
    """The build goes on only once its first line has reached the callback.

    A log handed over only at the end would leave the build waiting until its
    wall time ran out.
    """
    host, fields = sandbox.with_build_dir()
    chunks: list[bytes] = []

    def on_log(chunk: bytes) -> None:
        chunks.append(chunk)
        (host / "go").touch()

    script = "echo early; while [ ! -e go ]; do sleep 0.05; done; echo late"
    spec = sandbox.spec(script, limits=Limits(wall_time=60), **fields)
    result = sandbox.launcher.submit(spec, on_log).wait(120)
    assert result.ok, "the first line arrived only at the end"
    assert b"".join(chunks) == result.log == b"early\nlate\n"


def test_scratch_contents_survive_the_run(sandbox: Sandboxes) -> None:
    host, fields = sandbox.with_build_dir()
    result = sandbox.run("mkdir out && echo built > out/file && ln -s file out/link", **fields)
    assert result.ok, result
    assert (host / "out" / "file").read_text() == "built\n"
    assert os.readlink(host / "out" / "link") == "file"


def test_limited_scratch_is_copied_back(sandbox: Sandboxes) -> None:
    host, fields = sandbox.with_build_dir()
    script = "mkdir -p out/d && echo built > out/d/file && chmod 000 out/d/file && echo t > /tmp/t"
    result = sandbox.run(script, limits=Limits(scratch_bytes=1 << 20), **fields)
    assert result.ok, result
    assert (host / "out" / "d" / "file").stat().st_mode & 0o777 == 0
    os.chmod(host / "out" / "d" / "file", 0o644)
    assert (host / "out" / "d" / "file").read_text() == "built\n"
    assert not (host / "t").exists()


@pytest.mark.parametrize("cap", [None, 1 << 20], ids=["bound", "capped"])
def test_symlinks_are_made_in_scratch_and_kept(sandbox: Sandboxes, cap: int | None) -> None:
    """A capped scratch is a fresh tmpfs: only the spec can put a symlink where the build looks."""
    host, fields = sandbox.with_build_dir()
    links = [Symlink("/build/in/link", "../target")]
    result = sandbox.run(
        "readlink in/link; echo x > out", symlinks=links, limits=Limits(scratch_bytes=cap), **fields
    )
    assert result.ok, result
    assert result.log == b"../target\n"
    assert os.readlink(host / "in" / "link") == "../target"


def test_files_are_written_before_start(sandbox: Sandboxes) -> None:
    host, fields = sandbox.with_build_dir()
    files = [File("/build/.attr-1", b"payload\n", 0o600), File("/etc/extra", b"x", 0o644)]
    result = sandbox.run(
        "cat /build/.attr-1; stat -c %a /build/.attr-1; cat /etc/extra", files=files, **fields
    )
    assert result.log == b"payload\n600\nx"
    assert (host / ".attr-1").read_bytes() == b"payload\n"


def test_a_spec_of_many_megabytes_does_not_hold_up_other_runs(sandbox: Sandboxes) -> None:
    """The launcher serves every run from one thread, and hands each spec to its PID 1."""
    host, fields = sandbox.with_build_dir()
    large = sandbox.spec("true", files=[File("/build/large", b"x" * (48 << 20))], **fields)
    handle = sandbox.launcher.submit(large)
    started = time.monotonic()
    small = sandbox.run("echo small")
    waited = time.monotonic() - started
    assert small.log == b"small\n"
    assert handle.wait(timeout=120).ok
    assert (host / "large").stat().st_size == 48 << 20
    assert waited < 8


def test_mountpoints_for_inputs_do_not_litter_scratch(sandbox: Sandboxes, tools: Path) -> None:
    store = sandbox.directory("store")
    fields = {"scratch": [Scratch("/nix/store", str(store))], "cwd": "/nix/store"}
    result = sandbox.run(
        "ls /nix/store/input/busybox && touch /nix/store/output",
        ro_binds=[Bind(str(tools), "/nix/store/input")],
        **fields,
    )
    assert result.ok, result
    assert sorted(p.name for p in store.iterdir()) == ["output"]


def test_wall_time_limit(sandbox: Sandboxes) -> None:
    started = time.monotonic()
    result = sandbox.run("sleep 3000", limits=Limits(wall_time=1))
    assert result.stopped_by == Limit.WALL_TIME
    assert Limit.WALL_TIME in result.limits_reached
    assert result.signal == signal.SIGKILL
    assert time.monotonic() - started < 60


def test_silence_limit(sandbox: Sandboxes) -> None:
    result = sandbox.run("echo hi; sleep 30", limits=Limits(silence=1, wall_time=20))
    assert result.stopped_by == Limit.SILENCE
    assert result.log == b"hi\n"


def test_cpu_time_limit(sandbox: Sandboxes) -> None:
    result = sandbox.run("while :; do :; done", limits=Limits(cpu_time=1, wall_time=30))
    assert result.stopped_by == Limit.CPU_TIME
    assert Limit.CPU_TIME in result.limits_reached
    assert result.user_time + result.system_time >= 0.5


@pytest.mark.parametrize("sandbox", ["rootful"], indirect=True)
def test_cpu_time_of_a_build_the_launcher_killed(sandbox: Sandboxes) -> None:
    """PID 1 dies with a cancelled build before it can report what its command
    used; the build's cgroup still tells, where PID 1's own rusage shows nearly
    nothing."""
    spun = threading.Event()
    script = "i=0; while :; do i=$((i+1)); [ $i = 300000 ] && echo spun; done"
    handle = sandbox.launcher.submit(sandbox.spec(script), lambda data: spun.set())
    assert spun.wait(120), "the build never spun"
    handle.cancel()
    result = handle.wait(120)
    assert result.stopped_by == CANCELLED
    assert result.user_time + result.system_time >= 0.2


def test_cancel_from_another_thread(sandbox: Sandboxes) -> None:
    handle = sandbox.launcher.submit(sandbox.spec("echo go; sleep 60"))
    timer = threading.Timer(0.5, handle.cancel)
    timer.start()
    result = handle.wait(30)
    assert result.stopped_by == CANCELLED
    assert result.log == b"go\n"


def test_concurrent_runs_from_threads(sandbox: Sandboxes) -> None:
    results: dict[int, bytes] = {}

    def worker(n: int) -> None:
        results[n] = sandbox.run(f"echo {n}; id -u").log

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: f"{n}\n1000\n".encode() for n in range(8)}


def test_init_forwards_sigterm_and_reaps(sandbox: Sandboxes) -> None:
    script = "trap 'echo got-term; exit 3' TERM; kill -TERM 1; sleep 5 & wait"
    result = sandbox.run(script, limits=Limits(wall_time=20))
    assert b"got-term" in result.log
    assert result.exit_code == 3


def test_invalid_spec_is_refused_before_running(sandbox: Sandboxes) -> None:
    with pytest.raises(SpecError):
        sandbox.launcher.submit(sandbox.spec("true", cwd="relative"))


def test_cli_runs_a_spec_file(tools: Path, tmp_path: Path) -> None:
    """The CLI starts its own launcher as the calling user (rootful in CI)."""
    spec = SandboxSpec(
        argv=["/bin/sh", "-c", "echo from-cli; exit 4"], ro_binds=[Bind(str(tools), "/bin")]
    )
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "--quiet", str(path)],
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["exit_code"] == 4
    assert result["log"] == "from-cli\n"


def test_output_can_be_reopened_through_dev(sandbox: Sandboxes) -> None:
    result = sandbox.run("echo out > /dev/stdout; echo err > /dev/stderr; echo fd > /dev/fd/1")
    assert result.ok, result
    assert result.log == b"out\nerr\nfd\n"


def test_a_spawned_launcher_runs_builds_once_waited_for(tools: Path) -> None:
    """What a caller does between spawn and wait_ready overlaps the launcher's start."""
    launcher = Launcher().spawn()
    try:
        assert launcher.wait_ready() is launcher
        assert launcher.info is not None
        spec = SandboxSpec(argv=["/bin/sh", "-c", "echo up"], ro_binds=[Bind(str(tools), "/bin")])
        assert launcher.run(spec, timeout=120).log == b"up\n"
    finally:
        launcher.stop()


def test_a_run_submitted_to_a_spawned_launcher_that_never_starts_fails(
    tools: Path, tmp_path: Path
) -> None:
    """Nobody waits for a spawned launcher, so its start timeout must still end its runs.

    The interpreter given hangs the way a launcher stuck in its start-up would.
    """
    hung = tmp_path / "hung-python"
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    launcher = Launcher(LauncherConfig(python=str(hung), start_timeout=1.0)).spawn()
    try:
        spec = SandboxSpec(argv=["/bin/sh", "-c", "true"], ro_binds=[Bind(str(tools), "/bin")])
        handle = launcher.submit(spec)
        with pytest.raises(LauncherError, match="start-up took longer than 1 s"):
            handle.wait(timeout=60)
    finally:
        launcher.stop(timeout=5)


def test_waiting_for_a_launcher_never_spawned_is_an_error() -> None:
    with pytest.raises(LauncherError, match="not spawned"):
        Launcher().wait_ready()


def test_launcher_reports_mode() -> None:
    with Launcher() as launcher:
        assert launcher.info is not None
        assert launcher.info.rootful == (os.geteuid() == 0)


def test_custom_inside_ids(sandbox: Sandboxes) -> None:
    result = sandbox.run("id; echo x > /tmp/f; stat -c '%u %g' /tmp/f", uid=2000, gid=200)
    assert result.log == b"uid=2000(nixbld) gid=200(nixbld)\n2000 200\n"


def test_setup_failure_is_reported(sandbox: Sandboxes) -> None:
    result = sandbox.run("true", ro_binds=[Bind("/nonexistent/input", "/input")])
    assert result.exit_code is None
    assert result.error is not None and "nonexistent" in result.error
    assert not result.ok
    assert sandbox.run("echo fine").log == b"fine\n"


def test_network_spec_gets_its_own_pid1(sandbox: Sandboxes) -> None:
    results = [sandbox.run("ip -o link | wc -l", network=network) for network in (True, False)]
    assert int(results[0].log) > 1
    assert int(results[1].log) == 1


def test_static_shell_is_provided_at_bin_sh(sandbox: Sandboxes) -> None:
    spec = SandboxSpec(argv=["/bin/sh", "-c", "echo $0 ok"], shell="/bin/busybox")
    result = sandbox.launcher.run(spec, timeout=60)
    assert result.log == b"/bin/sh ok\n"


def test_concurrent_root_builds_get_distinct_host_uids(
    rootful_launcher: Launcher, tools: Path, workspace: Path
) -> None:
    """Also across launchers: a second one on the same range must not reuse a uid."""
    config = rootful_launcher.config
    other = Launcher(config).start()
    dirs = []
    handles = []
    for n in range(4):
        host = workspace / f"uid-check-{n}"
        host.mkdir()
        dirs.append(host)
        spec = SandboxSpec(
            argv=["/bin/sh", "-c", "touch /build/mine; sleep 0.5; id -u"],
            ro_binds=[Bind(str(tools), "/bin")],
            scratch=[Scratch("/build", str(host))],
        )
        handles.append((rootful_launcher, other)[n % 2].submit(spec))
    try:
        assert [h.wait(60).log for h in handles] == [b"1000\n"] * 4
    finally:
        other.stop()
    owners = {(d / "mine").stat().st_uid for d in dirs}
    assert len(owners) == 4
    assert all(config.uid_base <= uid < config.uid_base + config.uid_count for uid in owners)


def test_failing_log_callback_does_not_break_the_launcher(sandbox: Sandboxes) -> None:
    def explode(_chunk: bytes) -> None:
        raise RuntimeError("callback failed")

    handle = sandbox.launcher.submit(sandbox.spec("echo one; sleep 0.1; echo two"), explode)
    result = handle.wait(30)
    assert result.log == b"one\ntwo\n"
    assert isinstance(handle.callback_error, RuntimeError)
    assert sandbox.run("echo still").log == b"still\n"

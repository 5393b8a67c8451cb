"""Nothing of a build survives it: processes, mounts, cgroups, directories.

Checked after success, failure, timeout and cancellation, and when the process
controlling the launcher is SIGKILLed in the middle of a build.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sandbox import Bind, Launcher, LauncherConfig, Limits, SandboxSpec
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.waiting import wait_for

from .conftest import Sandboxes

ROOT = Path(__file__).resolve().parents[2]


def build_cgroups(launcher: Launcher) -> set[str]:
    """Names of the launcher's build groups (one directory per v1 hierarchy)."""
    assert launcher.info is not None
    return {p.name for parent in launcher.info.cgroup_parents for p in Path(parent).glob("build-*")}


RUN_SLEEP = sleep_marker(1001)
SCENARIOS = {
    "success": (f"setsid {RUN_SLEEP} & echo done", Limits()),
    "failure": (f"setsid {RUN_SLEEP} & exit 3", Limits()),
    "timeout": (f"setsid {RUN_SLEEP} & {RUN_SLEEP}", Limits(wall_time=0.5)),
    "cancel": (f"setsid {RUN_SLEEP} & {RUN_SLEEP}", Limits()),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_nothing_survives_a_run(sandbox: Sandboxes, scenario: str) -> None:
    mounts_before = Path("/proc/self/mountinfo").read_text()
    spares = len(build_cgroups(sandbox.launcher))
    script, limits = SCENARIOS[scenario]
    _, fields = sandbox.with_build_dir()
    handle = sandbox.launcher.submit(sandbox.spec(script, limits=limits, **fields))
    if scenario == "cancel":
        wait_for(lambda: len(processes_with(RUN_SLEEP)) == 2, "both sleeps to run")
        handle.cancel()
    result = handle.wait(30)
    if scenario == "cancel":
        assert result.stopped_by == "cancelled"
    assert processes_with(RUN_SLEEP) == []
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    # The launcher refills its spare groups after it has reported a run's result.
    wait_for(
        lambda: len(build_cgroups(sandbox.launcher)) == spares,
        f"{spares} spare build groups and none left by the build",
    )
    if sandbox.rootful:
        assert spares == sandbox.launcher.config.spares


CLIENT = """
import sys, time
from sandbox import Bind, Launcher, LauncherConfig, SandboxSpec
config = LauncherConfig(**eval(sys.argv[1]))
launcher = Launcher(config).start()
print(launcher.info.pid, launcher.info.root_dir, *launcher.info.cgroup_parents, flush=True)
sleep = "sleep " + sys.argv[3]
spec = SandboxSpec(
    argv=["/bin/sh", "-c", f"setsid {sleep} & echo started; {sleep}"],
    ro_binds=[Bind(sys.argv[2], "/bin")],
)
launcher.submit(spec, on_log=lambda chunk: print(chunk.decode(), end="", flush=True))
time.sleep(600)
"""


def client_config(config: LauncherConfig) -> dict:
    fields = ("python", "python_path", "user", "group")
    return {name: getattr(config, name) for name in fields}


@pytest.mark.parametrize("mode", ["rootful", "rootless"])
def test_sigkilled_controller_leaves_nothing(
    mode: str, tools: Path, rootless_config: LauncherConfig
) -> None:
    config = client_config(LauncherConfig() if mode == "rootful" else rootless_config)
    marker = sleep_marker(1002)
    mounts_before = Path("/proc/self/mountinfo").read_text()
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, repr(config), str(tools), marker.removeprefix("sleep ")],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert client.stdout is not None
    pid, root_dir, *cgroup_parents = client.stdout.readline().split()
    assert client.stdout.readline() == "started\n"
    wait_for(lambda: len(processes_with(marker)) == 2, "both sleeps to run")
    client.send_signal(signal.SIGKILL)
    client.wait()
    wait_for(lambda: not psutil.pid_exists(int(pid)), "the launcher to die with its client")
    wait_for(lambda: processes_with(marker) == [], "the build to die with its client")
    assert not Path(root_dir).exists()
    for parent in cgroup_parents:
        assert not Path(parent).exists()
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


def test_builds_die_with_a_sigkilled_launcher(tools: Path) -> None:
    launcher = Launcher().start()
    assert launcher.info is not None
    parents = launcher.info.cgroup_parents
    root_dir = Path(launcher.info.root_dir)
    marker = sleep_marker(1003)
    try:
        spec = SandboxSpec(
            argv=["/bin/sh", "-c", f"setsid {marker} & {marker}"],
            ro_binds=[Bind(str(tools), "/bin")],
        )
        launcher.submit(spec)
        wait_for(lambda: len(processes_with(marker)) == 2, "both sleeps to run")
        os.kill(launcher.info.pid, signal.SIGKILL)
        wait_for(lambda: processes_with(marker) == [], "the build to die with its launcher")
    finally:
        launcher.stop()
    with Launcher():
        assert not any(Path(parent).exists() for parent in parents), "stale groups stay"
        assert not root_dir.exists()

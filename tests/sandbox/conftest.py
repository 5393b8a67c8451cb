"""Fixtures that run sandboxes both as root and as an ordinary user.

CI runs as root, so the rootless launcher is started under an unprivileged uid
of its own, with a Python that uid can execute (the venv's interpreter lives
under /root, which it cannot traverse) and the venv's site-packages on its
path. Everything the sandboxes read from the host lives in a 0755 workspace
under /tmp, and what they write goes to directories owned by the caller's uid.
"""

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox import Bind, Launcher, LauncherConfig, SandboxResult, SandboxSpec, Scratch
from tests.requirements import missing

ROOTLESS_UID = 64123
BUSYBOX = Path("/bin/busybox")
HERE = Path(__file__).resolve().parent
SECRET = "host-secret-7f3a9c"
_COUNTER = itertools.count()


@pytest.fixture(scope="session")
def workspace() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sandbox-tests-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tools(workspace: Path) -> Path:
    """A /bin for the sandbox: static busybox with its applets, plus the probe."""
    if not BUSYBOX.exists():
        missing("static busybox (busybox-static)")
    bin_dir = workspace / "tools" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(BUSYBOX, bin_dir / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    compiled = subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(bin_dir / "probe"), str(HERE / "probe.c")],
        capture_output=True,
        text=True,
    )
    if compiled.returncode != 0:
        missing(f"a toolchain for static test programs: {compiled.stderr}")
    for path in (workspace / "tools", bin_dir):
        path.chmod(0o755)
    return bin_dir


@pytest.fixture(scope="session")
def secret_file(workspace: Path) -> Path:
    """World-readable on the host: only isolation can keep a build from it."""
    path = workspace / "secret" / "secret.txt"
    path.parent.mkdir()
    path.parent.chmod(0o755)
    path.write_text(SECRET + "\n")
    path.chmod(0o644)
    return path


def _rootless_pythonpath() -> Path:
    """A world-readable copy of what the launcher imports.

    The checkout and the venv may sit where the unprivileged uid cannot look
    (under /root); copying is cheaper than reasoning about every parent's mode.
    """
    import _prctl
    import prctl
    import psutil
    import pyroute2
    import pyseccomp

    import sandbox

    target = Path(tempfile.mkdtemp(prefix="sandbox-tests-pylib-", dir="/tmp"))
    for package in (sandbox, psutil, pyroute2):
        source = Path(package.__file__).parent
        shutil.copytree(source, target / source.name, ignore=shutil.ignore_patterns("*.pyc"))
    for module in (prctl, _prctl, pyseccomp):
        shutil.copy(module.__file__, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _rootless_python(uid: int, pythonpath: Path) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import prctl, psutil, pyroute2, pyseccomp, sandbox"],
                env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                cwd="/",
                user=uid,
                group=uid,
                extra_groups=[],
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    missing(f"a Python {version} executable by uid {uid} that can import the launcher's packages")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def rootless_config() -> Iterator[LauncherConfig]:
    """How to start a launcher as an ordinary user (from root, under ROOTLESS_UID)."""
    if os.geteuid() != 0:
        yield LauncherConfig()
        return
    pythonpath = _rootless_pythonpath()
    try:
        python = _rootless_python(ROOTLESS_UID, pythonpath)
        yield LauncherConfig(
            python=python, python_path=(str(pythonpath),), user=ROOTLESS_UID, group=ROOTLESS_UID
        )
    finally:
        shutil.rmtree(pythonpath, ignore_errors=True)


@pytest.fixture(scope="session")
def rootful_launcher() -> Iterator[Launcher]:
    if os.geteuid() != 0:
        missing("root (rootful mode)")
    with Launcher(LauncherConfig()) as launcher:
        yield launcher


@pytest.fixture(scope="session")
def rootless_launcher(rootless_config: LauncherConfig) -> Iterator[Launcher]:
    with Launcher(rootless_config) as launcher:
        yield launcher


@dataclass
class Sandboxes:
    """Runs scripts in one mode, with the test tools mounted at /bin."""

    mode: str
    launcher: Launcher
    tools: Path
    workspace: Path
    uid: int

    def directory(self, name: str = "scratch") -> Path:
        """A fresh host directory the build may write to (owned by the caller)."""
        path = self.workspace / f"{self.mode}-{name}-{next(_COUNTER)}"
        path.mkdir()
        path.chmod(0o755)
        os.chown(path, self.uid, self.uid)
        return path

    def spec(self, script: str, **fields: Any) -> SandboxSpec:
        binds = [Bind(str(self.tools), "/bin"), *fields.pop("ro_binds", [])]
        env = {"PATH": "/bin", **fields.pop("env", {})}
        return SandboxSpec(argv=["/bin/sh", "-c", script], env=env, ro_binds=binds, **fields)

    def run(self, script: str, **fields: Any) -> SandboxResult:
        return self.launcher.run(self.spec(script, **fields), timeout=120)

    def with_build_dir(self) -> tuple[Path, dict[str, Any]]:
        host = self.directory("build")
        return host, {"scratch": [Scratch("/build", str(host))], "cwd": "/build"}

    @property
    def rootful(self) -> bool:
        return self.mode == "rootful"


@pytest.fixture(params=["rootful", "rootless"])
def sandbox(request: pytest.FixtureRequest, tools: Path, workspace: Path) -> Sandboxes:
    if request.param == "rootful":
        launcher = request.getfixturevalue("rootful_launcher")
        uid = 0
    else:
        launcher = request.getfixturevalue("rootless_launcher")
        uid = ROOTLESS_UID if os.geteuid() == 0 else os.geteuid()
    assert launcher.info is not None
    assert launcher.info.rootful == (request.param == "rootful")
    return Sandboxes(request.param, launcher, tools, workspace, uid)

"""Host uids of a root launcher: locked in a private directory, never shared, never blocked.

Real launchers as root with their own small uid ranges and lock directories,
so that nothing here competes with other launchers on the host.
"""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import (
    Bind,
    Launcher,
    LauncherConfig,
    LauncherError,
    RunHandle,
    SandboxSpec,
    Scratch,
    UidsExhaustedError,
)
from tests.isolation import private_uid_base
from tests.requirements import require_root

UID_BASE = private_uid_base(1)
WAIT = 60.0


@pytest.fixture
def root() -> None:
    require_root("build uids are only handed out by a root launcher")


@pytest.fixture
def lock_dir(tmp_path: Path, root: None) -> Path:
    return tmp_path / "uid-locks"


def _config(lock_dir: Path, **fields: object) -> LauncherConfig:
    return LauncherConfig(uid_base=UID_BASE, spares=0, uid_lock_dir=str(lock_dir), **fields)


def _scratch(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def _held_build(launcher: Launcher, tools: Path, scratch: Path) -> RunHandle:
    """A build that marks that it runs, then waits until the test lets it end."""
    script = "touch started; while [ ! -e go ]; do sleep 0.05; done"
    spec = SandboxSpec(
        argv=["/bin/sh", "-c", script],
        env={"PATH": "/bin"},
        cwd="/build",
        ro_binds=[Bind(str(tools), "/bin")],
        scratch=[Scratch("/build", str(scratch))],
    )
    return launcher.submit(spec)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _quick_spec(tools: Path) -> SandboxSpec:
    return SandboxSpec(argv=["/bin/true"], ro_binds=[Bind(str(tools), "/bin")])


@pytest.fixture
def two_launchers(lock_dir: Path) -> Iterator[tuple[Launcher, Launcher]]:
    config = _config(lock_dir, uid_count=2)
    with Launcher(config) as first, Launcher(config) as second:
        yield first, second


def test_lock_dir_is_created_private_and_holds_one_file_per_uid(
    lock_dir: Path, tools: Path
) -> None:
    with Launcher(_config(lock_dir, uid_count=3)) as launcher:
        result = launcher.run(_quick_spec(tools), timeout=WAIT)
    assert result.ok, result
    info = lock_dir.stat()
    assert (info.st_uid, oct(info.st_mode & 0o7777)) == (0, oct(0o700))
    names = {p.name for p in lock_dir.iterdir()}
    assert names <= {str(UID_BASE + i) for i in range(3)}
    assert names


def test_two_launchers_sharing_a_range_never_hand_out_the_same_uid(
    two_launchers: tuple[Launcher, Launcher], tools: Path, tmp_path: Path
) -> None:
    first, second = two_launchers
    scratches = [_scratch(tmp_path, "first"), _scratch(tmp_path, "second")]
    handles = [
        _held_build(launcher, tools, scratch)
        for launcher, scratch in zip(two_launchers, scratches, strict=True)
    ]
    try:
        for scratch in scratches:
            _wait_for(scratch / "started")
        owners = {(scratch / "started").stat().st_uid for scratch in scratches}
        assert owners == {UID_BASE, UID_BASE + 1}
        expected = f"all 2 build uids in {UID_BASE}..{UID_BASE + 1} are in use by running builds"
        for launcher in (first, second):
            with pytest.raises(UidsExhaustedError) as refused:
                launcher.run(_quick_spec(tools), timeout=WAIT)
            assert str(refused.value) == expected
    finally:
        for scratch in scratches:
            (scratch / "go").touch()
    for handle in handles:
        assert handle.wait(WAIT).ok
    assert second.run(_quick_spec(tools), timeout=WAIT).ok


def test_symlinked_lock_dir_is_refused(lock_dir: Path) -> None:
    real = lock_dir.parent / "real"
    real.mkdir(mode=0o700)
    lock_dir.symlink_to(real)
    with pytest.raises(LauncherError, match=r"uid lock directory '.*' is a symlink"):
        Launcher(_config(lock_dir, uid_count=1)).start()
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o707])
def test_lock_dir_open_to_group_or_others_is_refused(lock_dir: Path, mode: int) -> None:
    lock_dir.mkdir()
    lock_dir.chmod(mode)
    expected = f"has mode {mode:04o}; group and others must have no access"
    with pytest.raises(LauncherError, match=expected):
        Launcher(_config(lock_dir, uid_count=1)).start()
    assert list(lock_dir.iterdir()) == []


def test_relative_lock_dir_is_refused(root: None) -> None:
    with pytest.raises(LauncherError, match="'uid-locks' is not an absolute path"):
        Launcher(_config(Path("uid-locks"), uid_count=1)).start()
    assert not Path("/uid-locks").exists()


def test_lock_dir_of_another_user_is_refused(lock_dir: Path) -> None:
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, 65534, 65534)
    with pytest.raises(LauncherError, match="is owned by uid 65534, not by the launcher's uid 0"):
        Launcher(_config(lock_dir, uid_count=1)).start()
    assert list(lock_dir.iterdir()) == []


def test_an_idle_spare_gives_its_uid_to_a_run_of_another_profile(
    lock_dir: Path, tools: Path
) -> None:
    """The only uid is held by a spare cloned without network; a network run takes it."""
    config = LauncherConfig(uid_base=UID_BASE, uid_count=1, spares=1, uid_lock_dir=str(lock_dir))
    with Launcher(config) as launcher:
        spec = SandboxSpec(argv=["/bin/true"], ro_binds=[Bind(str(tools), "/bin")], network=True)
        result = launcher.run(spec, timeout=WAIT)
    assert result.ok, result

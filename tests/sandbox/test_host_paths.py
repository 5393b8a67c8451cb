"""Host-side paths never follow a symlink found in a scratch dir, in both launcher modes.

Each test plants (or has the build plant) a symlink to a canary directory
that only the launcher's user may enter, and proves the host side of the
sandbox neither wrote there, nor created, chowned, mounted or deleted
anything through it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sandbox import Bind, File, Scratch
from tests.canary import make_canary, snapshot
from tests.sandbox.conftest import Sandboxes


def _planted(sandbox: Sandboxes) -> tuple[Path, Path]:
    """A scratch dir holding ``store/evil -> canary``, as a symlink input makes it."""
    canary = make_canary(sandbox.workspace / f"{sandbox.directory('c').name}-canary", sandbox.uid)
    scratch = sandbox.directory("nix")
    (scratch / "store").mkdir()
    os.chown(scratch / "store", sandbox.uid, sandbox.uid)
    (scratch / "store" / "evil").symlink_to(canary)
    return scratch, canary


@pytest.mark.parametrize(
    "how",
    ["file", "file-deeper", "file-onto", "cwd", "bind-inside", "bind-onto"],
)
def test_setup_refuses_to_cross_a_planted_symlink(sandbox: Sandboxes, how: str) -> None:
    scratch, canary = _planted(sandbox)
    before = snapshot(canary)
    fields: dict[str, object] = {"scratch": [Scratch("/nix", str(scratch))]}
    if how == "file":
        fields["files"] = [File("/nix/store/evil/PWNED", b"attacker bytes\n")]
    elif how == "file-deeper":
        fields["files"] = [File("/nix/store/evil/sub/PWNED", b"attacker bytes\n")]
    elif how == "file-onto":
        fields["files"] = [File("/nix/store/evil", b"attacker bytes\n")]
    elif how == "cwd":
        fields["cwd"] = "/nix/store/evil/sub"
    elif how == "bind-inside":
        fields["ro_binds"] = [Bind(str(sandbox.tools), "/nix/store/evil/tools")]
    else:
        fields["ro_binds"] = [Bind(str(sandbox.tools), "/nix/store/evil")]
    result = sandbox.run("echo ran", **fields)
    assert result.error is not None, result
    assert "/nix/store/evil" in result.error
    assert b"ran" not in result.log
    assert snapshot(canary) == before


def test_cleanup_does_not_follow_a_symlink_the_build_planted(sandbox: Sandboxes) -> None:
    """The build moves the store holding its input mount points away and puts a
    symlink to a host directory with entries of the same names in its place."""
    canary = make_canary(sandbox.workspace / f"{sandbox.directory('c').name}-canary", sandbox.uid)
    os.chmod(canary, 0o755)
    (canary / "aaa-dir").mkdir()
    (canary / "bbb-file").touch()
    for entry in (canary / "aaa-dir", canary / "bbb-file"):
        os.chown(entry, sandbox.uid, sandbox.uid)
    canary.chmod(0o700)
    before = snapshot(canary)
    scratch = sandbox.directory("nix")
    result = sandbox.run(
        f"cd /nix && mv store old && ln -s {canary} store && echo planted",
        scratch=[Scratch("/nix", str(scratch))],
        ro_binds=[
            Bind(str(sandbox.tools), "/nix/store/aaa-dir"),
            Bind(str(sandbox.tools / "busybox"), "/nix/store/bbb-file"),
        ],
    )
    assert result.ok, result
    assert b"planted" in result.log
    assert snapshot(canary) == before
    assert (scratch / "store").is_symlink()


def test_failed_setup_leaves_no_mount_points_behind(sandbox: Sandboxes) -> None:
    """Mount points made in host scratch before a later step is refused are removed too."""
    scratch, canary = _planted(sandbox)
    before = snapshot(canary)
    result = sandbox.run(
        "echo ran",
        scratch=[Scratch("/nix", str(scratch))],
        ro_binds=[Bind(str(sandbox.tools), "/nix/made/tools")],
        files=[File("/nix/store/evil/PWNED", b"attacker bytes\n")],
    )
    assert result.error is not None, result
    assert "/nix/store/evil" in result.error
    assert [p.name for p in scratch.iterdir()] == ["store"]
    assert [p.name for p in (scratch / "store").iterdir()] == ["evil"]
    assert snapshot(canary) == before


def test_deep_mount_points_are_removed_in_time_linear_in_their_depth(
    sandbox: Sandboxes,
) -> None:
    """A mount target thousands of levels deep in scratch costs the launcher one walk.

    Listing and removing each created directory by its full path would take
    the launcher, which serves every build, minutes for a path of a few
    kilobytes; a chain of created directories is one entry, walked once.
    """
    host, fields = sandbox.with_build_dir()
    deep = "/build" + "/d" * 8000
    started = time.monotonic()
    result = sandbox.run(
        "echo ran",
        ro_binds=[Bind(str(sandbox.tools / "busybox"), f"{deep}/mounted")],
        files=[File(f"/build/kept{'/k' * 100}/file", b"contents\n")],
        **fields,
    )
    assert result.ok, result
    assert time.monotonic() - started < 30
    assert [p.name for p in host.iterdir()] == ["kept"]

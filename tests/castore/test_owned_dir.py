"""Per-process directories: a dead owner's is swept, a live owner's is not, stale entries age out.

Owners are real processes holding real locks; whether one is alive is decided
by the kernel's flock, which the tests observe rather than time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.owned_dir import OwnedDirectory, remove_flat

_OWNER = """
import sys
from pathlib import Path
from builder.castore.owned_dir import OwnedDirectory, remove_flat
owned = OwnedDirectory(Path(sys.argv[1]), remove_flat)
(owned.path / "upload").write_bytes(b"in progress")
print(owned.path, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def other_owner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process owning a directory under ``tmp_path / 'tmp'``, until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path / "tmp")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    path = Path(process.stdout.readline().strip())
    try:
        yield process, path
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)


def test_live_owner_is_left_alone_and_a_dead_one_swept(
    tmp_path: Path, other_owner: tuple[subprocess.Popen[str], Path]
) -> None:
    process, theirs = other_owner
    ours = OwnedDirectory(tmp_path / "tmp", remove_flat)
    assert (theirs / "upload").read_bytes() == b"in progress"
    process.kill()
    process.wait(60)
    ours.sweep()
    assert not theirs.exists()
    assert ours.path.is_dir()
    ours.close()
    assert not ours.path.exists()


def test_two_owners_in_one_process_do_not_sweep_each_other(tmp_path: Path) -> None:
    first = OwnedDirectory(tmp_path / "tmp", remove_flat)
    (first.path / "upload").write_bytes(b"x")
    second = OwnedDirectory(tmp_path / "tmp", remove_flat)
    second.sweep()
    assert (first.path / "upload").exists()
    first.close()
    second.close()


def test_age_sweep_removes_old_unused_entries_only(tmp_path: Path) -> None:
    owned = OwnedDirectory(tmp_path / "tmp", remove_flat, max_age=600)
    old = time.time() - 3600
    for name in ("old", "old-in-use", "fresh"):
        (owned.path / name).write_bytes(b"x")
    for name in ("old", "old-in-use"):
        os.utime(owned.path / name, (old, old))
    owned.claim("old-in-use")
    owned.sweep()
    assert sorted(os.listdir(owned.path)) == ["fresh", "old-in-use"]
    owned.release("old-in-use")
    owned.sweep()
    assert sorted(os.listdir(owned.path)) == ["fresh"]
    owned.close()


def test_sweep_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    parent = tmp_path / "tmp"
    parent.mkdir()
    os.symlink(outside, parent / "owner-1-dead")
    owned = OwnedDirectory(parent, remove_flat, max_age=600)
    os.symlink(outside, owned.path / "link")
    old = time.time() - 3600
    os.utime(owned.path / "link", (old, old), follow_symlinks=False)
    owned.sweep()
    assert (outside / "precious").read_bytes() == b"keep"
    assert sorted(os.listdir(parent)) == [owned.path.name]
    assert os.listdir(owned.path) == []
    owned.close()


def test_a_removal_that_raises_fails_neither_the_sweep_nor_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tree its build kept changing can make removal raise more than OSError."""

    def refuse(path: Path) -> None:
        raise ValueError(f"changed under us: {path}")

    owner = OwnedDirectory(tmp_path, refuse, max_age=1.0)
    entry = owner.claim("old")
    entry.mkdir()
    owner.release("old")
    os.utime(entry, (time.time() - 60, time.time() - 60))
    owner.sweep()
    assert entry.exists()
    assert any("removing" in r.getMessage() and r.exc_info for r in caplog.records)
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError):
        owner.close()
    assert len(os.listdir("/proc/self/fd")) == descriptors - 1

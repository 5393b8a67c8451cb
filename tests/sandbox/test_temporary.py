"""Temporary dirs: writable by the build, kept in memory, collected by nobody.

A Nix build directory is written file by file and thrown away; on a host
disk each file it creates costs an inode there and a removal afterwards.
"""

from __future__ import annotations

import pytest

from sandbox import Bind, File, Limit, Limits, SandboxSpec, Scratch, SpecError, Symlink
from sandbox.mounts import ENTRY_BYTES
from sandbox.spec import STORE_DIR

from .conftest import Sandboxes

# Prints the filesystem type of /build and who owns it, then fills it.
PROBE = (
    "while read dev dir kind rest; do [ $dir = /build ] && echo $kind; done < /proc/self/mounts; "
    "stat -c %u /build; for i in 1 2 3 4 5 6 7 8; do echo $i > /build/file-$i; done; "
    "ln -s file-1 /build/link; cat /build/file-8 > /out/copied"
)


@pytest.mark.parametrize("cap", [None, 1 << 20], ids=["own-tmpfs", "capped"])
def test_temporary_dir_is_a_tmpfs_the_build_owns_and_the_host_never_sees(
    sandbox: Sandboxes, cap: int | None
) -> None:
    out = sandbox.directory("out")
    result = sandbox.run(
        PROBE,
        scratch=[Scratch("/out", str(out))],
        temporary=["/build"],
        cwd="/build",
        limits=Limits(scratch_bytes=cap),
    )
    assert result.ok, result
    kind, owner = result.log.decode().split()
    assert kind == "tmpfs"
    assert int(owner) == 1000
    assert (out / "copied").read_text() == "8\n"
    assert [p.name for p in out.iterdir()] == ["copied"]
    assert not any(p.name.startswith("file-") for p in sandbox.workspace.rglob("file-*"))


@pytest.mark.parametrize(
    ("full", "temporary"), [("/build", ["/build"]), ("/dev/shm", [])], ids=["temporary", "shm"]
)
def test_writes_count_against_the_scratch_limit(
    sandbox: Sandboxes, full: str, temporary: list[str]
) -> None:
    out = sandbox.directory("out")
    limit = 2 << 20
    result = sandbox.run(
        f"dd if=/dev/zero of={full}/big bs=64k count=1000",
        scratch=[Scratch("/out", str(out))],
        temporary=temporary,
        limits=Limits(scratch_bytes=limit),
    )
    assert result.exit_code != 0
    assert b"No space left on device" in result.log
    assert Limit.SCRATCH_BYTES in result.limits_reached


def test_empty_entries_count_against_the_scratch_limit(sandbox: Sandboxes) -> None:
    """Empty dirs take no tmpfs block, but each becomes an inode (and a block) on the host."""
    out = sandbox.directory("out")
    limit = 1 << 20
    result = sandbox.run(
        "cd /out; i=0; while [ $i -lt 5000 ]; do mkdir d$i || exit 1; i=$((i+1)); done",
        scratch=[Scratch("/out", str(out))],
        temporary=["/build"],
        limits=Limits(scratch_bytes=limit),
    )
    assert result.exit_code != 0
    assert b"No space left on device" in result.log
    assert Limit.SCRATCH_BYTES in result.limits_reached
    # The sandbox's own mount points and dirs take a few entries of their own.
    made = sum(1 for _ in out.iterdir())
    assert limit // ENTRY_BYTES <= made < limit // ENTRY_BYTES + 32


def test_each_run_gets_an_empty_temporary_dir(sandbox: Sandboxes) -> None:
    for _ in range(2):
        result = sandbox.run("ls -A /build; echo left > /build/left", temporary=["/build"])
        assert result.ok, result
        assert result.log == b""


@pytest.mark.parametrize(
    ("temporary", "scratch", "problem"),
    [
        (["build"], [], "temporary dir must be an absolute path"),
        (["/build/../etc"], [], "temporary dir must be normalised"),
        (["//.scratch-store"], [], "temporary dir must be normalised"),
        (["//tmp"], [], "temporary dir must be normalised"),
        (["/tmp"], [], "/tmp is provided by the sandbox itself"),
        (["/out/build"], [Scratch("/out", "/host/out")], "scratch /out/build is nested"),
        (["/out"], [Scratch("/out", "/host/out")], "two mounts share a target"),
    ],
)
def test_bad_temporary_dirs_are_refused(
    temporary: list[str], scratch: list[Scratch], problem: str
) -> None:
    spec = SandboxSpec(argv=["/bin/true"], scratch=scratch, temporary=temporary)
    with pytest.raises(SpecError, match=problem.replace(".", r"\.")):
        spec.validate()


def test_temporary_dirs_survive_the_trip_to_the_launcher() -> None:
    spec = SandboxSpec(argv=["/bin/true"], temporary=["/build", "/var/cache"])
    assert SandboxSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "fields",
    [
        {"ro_binds": [Bind("/host/in", STORE_DIR)]},
        {"ro_binds": [Bind("/host/in", f"{STORE_DIR}/temporary-0")]},
        {"scratch": [Scratch(f"{STORE_DIR}/x", "/host/out")]},
        {"temporary": [f"{STORE_DIR}/build"]},
        {"files": [File(f"{STORE_DIR}/temporary-0/f", b"x")]},
        {"symlinks": [Symlink(f"{STORE_DIR}/link", "/")]},
        {"cwd": STORE_DIR},
    ],
    ids=["bind", "bind-inside", "scratch", "temporary", "file", "symlink", "cwd"],
)
def test_nothing_may_be_placed_where_the_sandbox_keeps_its_store(fields: dict) -> None:
    """A bind there would come before the temporary dirs' own binds and could
    redirect them onto a host directory of the caller's choosing."""
    spec = SandboxSpec(argv=["/bin/true"], **{"temporary": ["/a/b/build"], **fields})
    with pytest.raises(SpecError, match=f"lies in {STORE_DIR}"):
        spec.validate()

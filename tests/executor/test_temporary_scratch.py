"""Scratch paths that hold no output and no inputs are temporary: the host gives them no dir.

Nix's build directory is such a path. The sandbox keeps it in memory, so the
files a build writes there cost nothing on the work dir's disk, neither to
create nor to remove.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.nodes import SymlinkNode
from builder.errors import InvalidArgumentError
from builder.executor.config import BuildConfig, BuildLimits
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.request import AdditionalFile, BuildRequest, Constraints
from builder.executor.runner import BuildRunner
from sandbox import Launcher
from tests.requirements import require_root

# Writes the filesystem type of /build, and the directory of that filesystem
# mounted there, into the output.
SCRIPT = (
    "while read dev dir kind rest; do [ $dir = /build ] && printf $kind > /out/kind; done"
    " < /proc/self/mounts; while read id parent numbers root dir rest; do"
    ' [ $dir = /build ] && printf " $root" >> /out/kind; done < /proc/self/mountinfo;'
    " printf x > /build/scratch-file"
)


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    require_root("the sandbox launcher runs builds as build users")
    with Launcher() as started:
        yield started


def _run(
    tmp_path: Path, launcher: Launcher, inputs_dir: str, in_memory: bool = True
) -> tuple[list[str], list[str]]:
    """/build's filesystem type and root as the build saw them, and the work tree's
    entries while the sandbox ran."""
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    config = BuildConfig(
        work_dir=tmp_path / "work", result_cache=False, build_dirs_in_memory=in_memory
    )
    cache = MaterialisationCache(tmp_path / "cache", blobs, directories, 1 << 20)
    runner = BuildRunner(config, blobs, directories, launcher, cache)
    seen: list[str] = []

    @contextmanager
    def slot() -> Iterator[None]:
        yield
        (owner,) = (config.work_dir / "builds").iterdir()
        (tree,) = owner.iterdir()
        seen.extend(sorted(entry.name for entry in tree.iterdir()))

    request = BuildRequest(
        inputs=(),
        command_args=("/bin/sh", "-c", SCRIPT),
        working_dir="build",
        scratch_paths=("build", "out"),
        inputs_dir=inputs_dir,
        outputs=("out/kind",),
        environment=(),
        constraints=Constraints(system="x86_64-linux", provide_bin_sh=True),
    )
    try:
        (output,) = runner.run(request, slot=slot)
        reader = blobs.open_read(output.node.digest)
        assert reader is not None
        contents = reader.read()
    finally:
        runner.close()
        cache.close()
    return contents.decode().split(), seen


def test_a_build_directory_without_outputs_or_inputs_is_a_tmpfs(
    tmp_path: Path, launcher: Launcher
) -> None:
    (kind, _), work_tree = _run(tmp_path, launcher, "nix/store")
    assert kind == "tmpfs"
    # scratch-0 would be the host dir of "build": only the output's dir exists.
    assert "scratch-0" not in work_tree
    assert "scratch-1" in work_tree


def test_a_build_directory_holding_the_inputs_stays_on_the_host(
    tmp_path: Path, launcher: Launcher
) -> None:
    _, work_tree = _run(tmp_path, launcher, "build/inputs")
    assert {"scratch-0", "scratch-1"} <= set(work_tree)


def test_an_operator_can_keep_build_directories_on_disk(tmp_path: Path, launcher: Launcher) -> None:
    (_, root), work_tree = _run(tmp_path, launcher, "nix/store", in_memory=False)
    assert "scratch-0" in work_tree
    # The host dir itself is mounted there, whatever its filesystem.
    assert root.endswith("/scratch-0")


@pytest.mark.parametrize("cap", [None, 1 << 20], ids=["own-tmpfs", "capped"])
def test_inputs_cannot_cover_the_store_the_build_directory_comes_from(
    tmp_path: Path, launcher: Launcher, cap: int | None
) -> None:
    """Inputs at the store's place, a symlink named like the build directory's source
    among them, would send the build directory (and the files written into it
    as root while the root is assembled) onto that host directory."""
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    config = BuildConfig(
        work_dir=tmp_path / "work", result_cache=False, limits=BuildLimits(scratch_bytes=cap)
    )
    cache = MaterialisationCache(tmp_path / "cache", blobs, directories, 1 << 20)
    runner = BuildRunner(config, blobs, directories, launcher, cache)
    request = BuildRequest(
        inputs=(SymlinkNode(name=b"temporary-0", target=str(victim).encode()),),
        command_args=("/bin/sh", "-c", "echo built > /a/b/build/by-the-build"),
        working_dir="a/b/build",
        scratch_paths=("a/b/build",),
        inputs_dir=".scratch-store",
        outputs=(),
        environment=(),
        constraints=Constraints(system="x86_64-linux", provide_bin_sh=True),
        additional_files=(AdditionalFile("a/b/build/by-the-sandbox", b"x"),),
    )
    try:
        with pytest.raises(InvalidArgumentError, match=r"lies in /\.scratch-store"):
            runner.run(request)
    finally:
        runner.close()
        cache.close()
    assert list(victim.iterdir()) == []

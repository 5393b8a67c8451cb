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
from builder.executor.config import BuildConfig
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.request import BuildRequest, Constraints
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

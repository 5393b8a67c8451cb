"""A job slot bounds running sandboxes only: outputs are collected and work trees removed after.

The slot a build holds is given back when its sandbox ends, so the next
build can start while this one's outputs go into the castore; the work tree
is still gone, and the outputs stored, before the build returns or fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.errors import CommandFailedError
from builder.executor.config import BuildConfig
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.request import BuildRequest, Constraints
from builder.executor.runner import BuildRunner
from sandbox import Launcher
from tests.requirements import require_root

CONTENTS = b"collected after the slot\n"


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    require_root("the sandbox launcher runs builds as build users")
    with Launcher() as started:
        yield started


def _request(script: str) -> BuildRequest:
    return BuildRequest(
        inputs=(),
        command_args=("/bin/sh", "-c", script),
        working_dir="build",
        scratch_paths=("build",),
        inputs_dir="nix/store",
        outputs=("build/out",),
        environment=(("PATH", b"/bin"),),
        constraints=Constraints(system="x86_64-linux", provide_bin_sh=True),
    )


def _work_trees(work_dir: Path) -> list[str]:
    """The builds' work trees, in this process's own directory under ``builds``."""
    return sorted(
        tree.name for owner in (work_dir / "builds").iterdir() for tree in owner.iterdir()
    )


@pytest.mark.parametrize("fails", [False, True])
def test_the_slot_is_released_before_collection_and_the_tree_is_removed_after(
    tmp_path: Path, launcher: Launcher, fails: bool
) -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    config = BuildConfig(work_dir=tmp_path / "work", result_cache=False)
    cache = MaterialisationCache(tmp_path / "cache", blobs, directories, 1 << 20)
    runner = BuildRunner(config, blobs, directories, launcher, cache)
    digest = Digest.of(CONTENTS)
    seen_at_release: list[bool] = []
    work_trees_at_release: list[list[str]] = []

    @contextmanager
    def slot() -> Iterator[None]:
        yield
        seen_at_release.append(blobs.has(digest))
        work_trees_at_release.append(_work_trees(config.work_dir))

    script = f"printf '{CONTENTS.decode()}' > /build/out" + ("; exit 3" if fails else "")
    try:
        if fails:
            with pytest.raises(CommandFailedError, match="exited with code 3"):
                runner.run(_request(script), slot=slot)
        else:
            outputs = runner.run(_request(script), slot=slot)
            assert outputs[0].node.digest == digest
            assert blobs.has(digest)
        # Released once, with the work tree still there and nothing collected yet.
        assert seen_at_release == [False]
        assert len(work_trees_at_release[0]) == 1
        # The tree goes after the build has answered, before the runner says so.
        runner.wait_for_removals()
        assert _work_trees(config.work_dir) == []
    finally:
        runner.close()
        cache.close()

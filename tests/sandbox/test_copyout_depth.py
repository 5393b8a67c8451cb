"""Copy-back of a capped scratch tmpfs holding a tree deeper than the recursion limit."""

import os
import subprocess
import sys
from pathlib import Path

from sandbox import Limits
from tests.sandbox.conftest import Sandboxes

# One-letter names keep busybox's full-path ``cd`` under PATH_MAX inside; the
# copy itself must neither recurse nor hold a descriptor per level.
DEPTH = max(2_000, sys.getrecursionlimit() + 500)
_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _bottom_contents(root: Path) -> tuple[int, bytes]:
    depth = 0
    fd = os.open(root, _FLAGS)
    try:
        while "d" in os.listdir(fd):
            child = os.open("d", _FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            depth += 1
        leaf = os.open("f", os.O_RDONLY, dir_fd=fd)
        with open(leaf, "rb") as file:
            return depth, file.read()
    finally:
        os.close(fd)


def test_deep_tree_is_copied_back(sandbox: Sandboxes) -> None:
    host, fields = sandbox.with_build_dir()
    script = (
        f"mkdir out && cd out && i=0; while [ $i -lt {DEPTH} ]; do mkdir d; cd d; "
        "i=$((i+1)); done; echo bottom > f && chmod 500 ."
    )
    try:
        result = sandbox.run(script, limits=Limits(scratch_bytes=64 << 20), **fields)
        assert result.ok, result
        assert _bottom_contents(host / "out") == (DEPTH, b"bottom\n")
    finally:
        # coreutils' rm walks without recursion; shutil.rmtree would not cope.
        subprocess.run(["rm", "-rf", "--one-file-system", str(host)], check=True)

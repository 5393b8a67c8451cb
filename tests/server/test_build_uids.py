"""Build uids over real gRPC: another local user cannot hold them, running out is reported.

Each server here has a launcher of its own with a small uid range that no
other launcher on the host uses.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from builder.castore.wire import Family
from builder.executor.request import request_to_proto
from sandbox import Launcher, LauncherConfig
from tests.isolation import UID_LOCK_DIR, private_uid_base
from tests.requirements import require_root
from tests.server.test_build_grpc import Served, _request, _serve

NOBODY = 65534
WAIT = 60.0

# Binds the abstract socket name of every uid of the range, as the launcher
# once did to hold one, tries to open and lock every uid's file in the lock
# directory, reports what it got and keeps it all until its stdin closes.
SQUATTER = r"""
import fcntl, os, socket, sys
base, count, lock_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held, locked = [], 0
for uid in range(base, base + count):
    name = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        name.bind(f"\0sandbox-build-uid-{uid}")
        held.append(name)
    except OSError:
        name.close()
    try:
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked += 1
    except OSError:
        pass
print(len(held), locked, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def root() -> None:
    require_root("build uids are only handed out by a root launcher")


@contextmanager
def _squatter(base: int, count: int) -> Iterator[tuple[int, int]]:
    """An unprivileged process holding what it can of the range: (names, locks)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python is not None, "no system python3 for the unprivileged process"
    squatter = subprocess.Popen(
        [python, "-c", SQUATTER, str(base), str(count), UID_LOCK_DIR],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
    )
    assert squatter.stdin is not None and squatter.stdout is not None
    try:
        names, locks = map(int, squatter.stdout.readline().split())
        yield names, locks
    finally:
        squatter.stdin.close()
        squatter.wait(WAIT)


def test_an_unprivileged_user_cannot_stop_builds(root: None, tmp_path: Path) -> None:
    base, count = private_uid_base(2), 4
    config = LauncherConfig(uid_base=base, uid_count=count, spares=0)
    with Launcher(config) as launcher, _squatter(base, count) as held:
        assert held == (count, 0)
        with contextmanager(_serve)(tmp_path, launcher, result_cache=False) as served:
            for i in range(count + 1):
                request = _request(f"echo {i} > /nix/store/out")
                response = served.snix().DoBuild(
                    request_to_proto(request, Family.SNIX), timeout=WAIT
                )
                assert response.outputs


def _wait_for_build_dir(served: Served, name: str) -> Path:
    deadline = time.monotonic() + WAIT
    while True:
        # The request's second scratch path, nix/store: the build dir has no host dir.
        found = list(served.work.glob(f"builds/owner-*/*/scratch-1/{name}"))
        if found:
            return found[0].parent
        assert time.monotonic() < deadline, f"no build wrote {name}"
        time.sleep(0.05)


def test_running_out_of_build_uids_is_resource_exhausted(root: None, tmp_path: Path) -> None:
    base = private_uid_base(3)
    config = LauncherConfig(
        uid_base=base, uid_count=1, spares=0, uid_lock_dir=str(tmp_path / "uid-locks")
    )
    with (
        Launcher(config) as launcher,
        contextmanager(_serve)(tmp_path, launcher, job_slots=2) as served,
    ):
        held = _request(
            "cd /nix/store; touch started; while [ ! -e go ]; do sleep 0.05; done; echo x > out"
        )
        running = served.snix().DoBuild.future(request_to_proto(held, Family.SNIX), timeout=WAIT)
        build_dir = _wait_for_build_dir(served, "started")
        quick = request_to_proto(_request("echo y > /nix/store/out"), Family.SNIX)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                served.snix().DoBuild(quick, timeout=WAIT)
        finally:
            (build_dir / "go").touch()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            f"all 1 build uids in {base}..{base} are in use by running builds"
        )
        assert running.result().outputs
        assert served.snix().DoBuild(quick, timeout=WAIT).outputs

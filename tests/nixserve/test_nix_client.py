"""Real Nix 2.8 offloads builds to ``builder-nix-serve`` as its remote program.

Each mode (an embedded data directory, a running ``builder serve`` reached
on its gRPC unix socket, and the same server serving the connections the
program relays to its hand-off socket) builds the whole corpus in one
``nix-build --max-jobs 0`` call, so Nix can only build through us; the local Nix then rebuilds every
deterministic derivation with ``--check``, which fails on any difference.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from builder.nix.derivation import load_derivation
from builder.nix.nix_store import NixStore
from builder.store.store import Store
from builder.store.store_path import StorePath
from tests.isolation import sleep_marker
from tests.nix.corpus import FAILING, FILES, busybox_dir
from tests.nix.corpus import instantiate as instantiate_corpus
from tests.nixserve.offload import (
    SERVE_PROGRAM,
    Machine,
    instantiate,
    offload,
    offload_environment,
    rebuild_locally,
    uploads,
)
from tests.processes import processes_with, strays
from tests.test_cli_build_remote import serving
from tests.waiting import wait_for

DETERMINISTIC = [name for name in FILES if name not in FAILING]
MODES = ["embedded", "server", "handoff"]
# Nix tries a derivation it could not place on a busy machine again only after
# build-poll-interval (5 s): with a slot for every derivation that can be ready
# at once, the corpus never waits on that.
CORPUS_SLOTS = 6
LOG_LIMIT = 5000


pytestmark = pytest.mark.usefixtures("nix_client", "no_strays")


@dataclass
class Remote:
    """Where ``builder-nix-serve`` keeps what it builds: its ``--store``, and its PathInfos."""

    store: str
    pathinfo_spec: str | None
    data_dir: Path | None

    def machine(self, jobs: int = CORPUS_SLOTS) -> Machine:
        return Machine(str(SERVE_PROGRAM), self.store, jobs)

    def stored_paths(self) -> set[StorePath]:
        with Store.open(self.pathinfo_spec, self.data_dir) as store:
            return {info.path for info in store.pathinfos.list()}


def embedded(data_dir: Path) -> Remote:
    return Remote(str(data_dir), None, data_dir)


@pytest.fixture(scope="module", params=MODES)
def remote(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Remote]:
    tmp = tmp_path_factory.mktemp(f"nix-client-{request.param}")
    if request.param == "embedded":
        yield embedded(tmp / "data")
        return
    address = f"grpc+unix://{tmp}/builder.sock"
    handoff = tmp / "handoff.sock"
    # The corpus has fixed-output derivations, which a server builds only if allowed the network.
    with serving(tmp, address, "--allow-network", "--nix-handoff", str(handoff)) as server:
        store = f"handoff+unix://{handoff}" if request.param == "handoff" else server.address
        yield Remote(store, server.address, None)


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_dir(tmp_path_factory.mktemp("nix-client-busybox"))


def closure_derivations(drvs: list[str]) -> list[str]:
    """The derivations ``drvs`` need, themselves included, as the local Nix lists them."""
    done = subprocess.run(
        ["nix-store", "--query", "--requisites", *drvs],
        capture_output=True, text=True, env=offload_environment(), check=True,
    )  # fmt: skip
    return [path for path in done.stdout.split() if path.endswith(".drv")]


def built_on(log: str, remote: Remote) -> set[str]:
    """The derivations the client's log says it sent to ``remote``'s machine."""
    uri = re.escape(remote.machine().uri)
    return set(re.findall(rf"building '(/nix/store/[^']+\.drv)' on '{uri}'", log))


@dataclass
class Offloaded:
    remote: Remote
    drvs: dict[str, str]
    log: str
    returncode: int
    deterministic: list[str]
    check_log: str
    check_returncode: int


@pytest.fixture(scope="module")
def offloaded(remote: Remote, busybox: Path) -> Offloaded:
    drvs = instantiate_corpus(FILES, busybox)
    done = offload(list(drvs.values()), [remote.machine()], "--keep-going")
    deterministic = closure_derivations([drvs[name] for name in DETERMINISTIC])
    check = rebuild_locally(deterministic)
    return Offloaded(
        remote, drvs, done.stderr, done.returncode, deterministic, check.stderr, check.returncode
    )


def test_every_deterministic_derivation_builds_through_us_as_nix_builds_it(
    offloaded: Offloaded,
) -> None:
    assert offloaded.returncode != 0, "the failing derivations of the corpus must fail"
    missing = set(offloaded.deterministic) - built_on(offloaded.log, offloaded.remote)
    assert not missing, f"not built on the remote: {sorted(missing)}\n{offloaded.log}"
    outputs = [
        output.path for drv in offloaded.deterministic for output in load_derivation(drv).outputs
    ]
    invalid = set(outputs) - NixStore(offload_environment()).valid(outputs)
    assert not invalid, f"outputs Nix did not receive: {sorted(map(str, invalid))}\n{offloaded.log}"
    assert set(outputs) <= offloaded.remote.stored_paths()
    assert offloaded.check_returncode == 0, offloaded.check_log
    checked = set(re.findall(r"checking outputs of '([^']+)'", offloaded.check_log))
    assert checked == set(offloaded.deterministic), offloaded.check_log


def test_chains_and_diamonds_upload_each_input_once(offloaded: Offloaded) -> None:
    sent = uploads(offloaded.log)
    twice = {path: count for path, count in sent.items() if count > 1}
    assert not twice, f"uploaded more than once: {twice}\n{offloaded.log}"
    # Outputs built on the remote are already there when a dependent build needs them.
    built_outputs = {
        str(output.path)
        for drv in built_on(offloaded.log, offloaded.remote)
        for output in load_derivation(drv).outputs
    }
    assert not built_outputs & set(sent), offloaded.log
    assert {Path(path).name.split("-", 1)[1] for path in sent} == {"busybox", "input.txt"}
    assert {StorePath.parse(path) for path in sent} <= offloaded.remote.stored_paths()
    for name in ("chain", "diamond"):
        inputs = [drv for drv, _ in load_derivation(offloaded.drvs[name]).input_derivations]
        assert {str(drv) for drv in inputs} <= built_on(offloaded.log, offloaded.remote)


def test_failing_builder_shows_its_log(offloaded: Offloaded) -> None:
    drv = offloaded.drvs["failing"]
    assert "about to fail" in offloaded.log
    assert f"builder for '{drv}' failed" in offloaded.log
    assert drv not in offloaded.check_log


def test_fixed_output_hash_mismatch_is_reported_as_nix_does(offloaded: Offloaded) -> None:
    drv = offloaded.drvs["fixed-mismatch"]
    assert f"hash mismatch in fixed-output derivation '{drv}'" in offloaded.log
    output = load_derivation(drv).outputs[0].path
    assert not NixStore(offload_environment()).valid([output])


def _limited(remote: Remote, busybox: Path, attr: str, *options: str) -> str:
    salt = secrets.token_hex(6)
    drvs = instantiate("limits.nix", busybox, attr=attr, salt=salt, sleep=sleep_marker(30))
    done = offload(drvs, [remote.machine()], *options, timeout=120)
    assert done.returncode != 0, done.stderr
    assert not NixStore(offload_environment()).valid(
        [output.path for output in load_derivation(drvs[0]).outputs]
    )
    wait_for(lambda: not processes_with(sleep_marker(30)), "the sleeping build to be killed")
    return done.stderr


def test_build_timeout_ends_the_build(remote: Remote, busybox: Path) -> None:
    log = _limited(remote, busybox, "sleeper", "--timeout", "1")
    assert "going to sleep" in log
    assert "timed out after 1 seconds" in log, log
    assert "of silence" not in log


def test_max_silent_time_ends_the_build(remote: Remote, busybox: Path) -> None:
    log = _limited(remote, busybox, "sleeper", "--max-silent-time", "1")
    assert "timed out after 1 seconds of silence" in log, log


def test_max_build_log_size_ends_the_build(remote: Remote, busybox: Path) -> None:
    log = _limited(remote, busybox, "chatty", "--option", "max-build-log-size", str(LOG_LIMIT))
    assert f"killed after writing more than {LOG_LIMIT} bytes of log output" in log, log
    assert "chatter line 1999" not in log


def test_two_machines_share_independent_builds(tmp_path: Path, busybox: Path) -> None:
    first, second = embedded(tmp_path / "a"), embedded(tmp_path / "b")
    drvs = instantiate("slow.nix", busybox, salt=secrets.token_hex(6))
    # Each machine has one slot and Nix holds a machine's slot for as long as a
    # build runs on it. Every build takes seconds, far longer than Nix needs to
    # start the next one, so while the first machine is busy the next build can
    # only go to the second: both must get work, whatever order Nix tries them in.
    done = offload(drvs, [first.machine(jobs=1), second.machine(jobs=1)])
    assert done.returncode == 0, done.stderr
    for remote in (first, second):
        built = built_on(done.stderr, remote)
        assert built, f"{remote.store} built nothing:\n{done.stderr}"
        outputs = {output.path for drv in built for output in load_derivation(drv).outputs}
        assert outputs <= remote.stored_paths()
    assert built_on(done.stderr, first) | built_on(done.stderr, second) == set(drvs)


def test_leftover_check_sees_a_stray() -> None:
    """The clean-up check above must be able to fail: a process of this run left running counts."""
    stray = psutil.Popen(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True)
    assert stray.stdout is not None
    orphan = psutil.Process(int(stray.stdout.readline()))
    stray.wait()
    try:
        assert orphan.pid in {process.pid for process in strays()}
    finally:
        orphan.kill()
        orphan.wait()

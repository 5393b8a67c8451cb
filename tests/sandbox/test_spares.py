"""PIDs 1 cloned ahead of demand follow the profiles runs ask for."""

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sandbox import Bind, Launcher, LauncherConfig, SandboxSpec
from sandbox.spares import DEFAULT_PROFILE, Demand, Profile
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.requirements import require_root
from tests.waiting import wait_for

NETWORK = Profile(DEFAULT_PROFILE.inside_ids, network=True)
OTHER_IDS = Profile((2000, 2000), network=False)


def test_only_the_default_profile_is_wanted_before_any_run() -> None:
    assert Demand().wanted() == [DEFAULT_PROFILE]


def test_a_profile_asked_for_is_wanted_the_latest_first() -> None:
    demand = Demand()
    demand.ask(NETWORK)
    assert demand.wanted() == [NETWORK, DEFAULT_PROFILE]
    demand.ask(OTHER_IDS)
    demand.ask(DEFAULT_PROFILE)
    assert demand.wanted() == [DEFAULT_PROFILE, OTHER_IDS, NETWORK]


def test_a_profile_no_recent_run_asked_for_is_let_go_but_never_the_default() -> None:
    demand = Demand(remembered_runs=3)
    demand.ask(NETWORK)
    demand.ask(OTHER_IDS)
    demand.ask(OTHER_IDS)
    assert demand.wanted() == [OTHER_IDS, NETWORK, DEFAULT_PROFILE]
    demand.ask(OTHER_IDS)
    assert demand.wanted() == [OTHER_IDS, DEFAULT_PROFILE]
    for _ in range(3):
        demand.ask(NETWORK)
    assert demand.wanted() == [NETWORK, DEFAULT_PROFILE]


@pytest.fixture(params=["rootful", "rootless"])
def launcher(request: pytest.FixtureRequest, rootless_config: LauncherConfig) -> Iterator[Launcher]:
    """A launcher of its own with one spare per profile, so its children are all its spares."""
    if request.param == "rootful":
        require_root("a rootful launcher")
        config = LauncherConfig(spares=1)
    else:
        config = dataclasses.replace(rootless_config, spares=1)
    with Launcher(config) as started:
        yield started


def _children(launcher: Launcher) -> set[int]:
    assert launcher.info is not None
    return {child.pid for child in psutil.Process(launcher.info.pid).children()}


def test_a_network_run_leaves_a_spare_for_the_next_one(launcher: Launcher, tools: Path) -> None:
    binds = [Bind(str(tools), "/bin")]
    wait_for(lambda: len(_children(launcher)) == 1, "the default profile's spare")
    first = SandboxSpec(argv=["/bin/true"], ro_binds=binds, network=True)
    assert launcher.run(first, timeout=60).ok
    wait_for(lambda: len(_children(launcher)) == 2, "a spare for each of the two profiles")
    spares = _children(launcher)
    marker = sleep_marker(1002)
    second = SandboxSpec(argv=["/bin/sh", "-c", marker], ro_binds=binds, network=True)
    handle = launcher.submit(second)
    wait_for(lambda: processes_with(marker), "the second network run to start")
    (sleeping,) = processes_with(marker)
    lineage = {sleeping.pid, *(parent.pid for parent in sleeping.parents())}
    assert len(lineage & spares) == 1, "the run went to a PID 1 cloned before it was asked for"
    handle.cancel()
    assert handle.wait(60).stopped_by == "cancelled"

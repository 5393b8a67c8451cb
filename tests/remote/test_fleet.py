"""Clients of several builders: calls spread over them, busy builders' refusals retried,
unhealthy builders skipped. Real servers on real TCP and unix sockets, in this process,
sharing one store as a fleet must."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from builder.castore.blobs.fs import FsBlobService
from builder.castore.composition import Composition, Registry
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.metadata import NODE_KEY
from builder.castore.wire import Family
from builder.errors import ResourceExhaustedError, UnavailableError
from builder.executor.config import BuildConfig
from builder.executor.request import request_to_proto
from builder.executor.service import BuildService, Event
from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.remote.client import RemoteBuilder, RemoteOutcome
from builder.remote.retry import RetryPolicy
from builder.server.app import create_server
from builder.server.assembly import BoundServer
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.results.memory import MemoryResultCache
from builder.store.store import Store
from sandbox import Launcher
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.server.test_build_grpc import _request
from tests.waiting import wait_for

# Quick retries: the tests wait on what happened, not on the pauses.
QUICK = RetryPolicy(retries=4, total_seconds=60.0, first_delay=0.05, max_delay=0.2)


@dataclass
class Node:
    name: str
    bound: BoundServer
    service: BuildService

    @property
    def address(self) -> str:
        return self.bound.addresses[0]


@dataclass
class Fleet:
    nodes: list[Node]
    store: Store
    tmp: Path

    def address(self, nodes: list[Node] | None = None) -> str:
        """One client address naming ``nodes`` (default: all)."""
        addresses = [n.address for n in nodes or self.nodes]
        scheme = addresses[0].partition("://")[0]
        return f"{scheme}://" + ",".join(a.partition("://")[2] for a in addresses)


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher() as started:
        yield started


@contextmanager
def fleet_of(
    tmp: Path, launcher: Launcher, listen: Callable[[int], str], count: int, **config: object
) -> Iterator[Fleet]:
    """``count`` builders on one shared store, each with its own work directory."""
    blobs = FsBlobService(tmp / "blobs")
    directories = SqliteDirectoryService(tmp / "directories")
    pathinfos = SqlitePathInfoService(tmp / "pathinfo.sqlite")
    store = Store(blobs, directories, pathinfos, MemoryResultCache(), Composition({}, Registry()))
    with ExitStack() as stack:
        stack.callback(pathinfos.close)
        nodes = []
        for i in range(count):
            service = BuildService(
                BuildConfig(work_dir=tmp / f"work-{i}", **config),
                blobs,
                directories,
                launcher,
                store.results,
            )
            stack.callback(service.close)
            bound = create_server(store, service, [listen(i)], node_name=f"node-{i}")
            bound.server.start()
            stack.callback(lambda b=bound: b.server.stop(5).wait())
            nodes.append(Node(f"node-{i}", bound, service))
        yield Fleet(nodes, store, tmp)


def _tcp(i: int) -> str:
    return "grpc+http://127.0.0.1:0"


def _build(remote: RemoteBuilder, fleet: Fleet, script: str) -> RemoteOutcome:
    events: list[Event] = []
    return remote.build(_request(script), fleet.store.blobs, fleet.store.directories, events.append)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_builds_spread_over_every_builder(
    transport: str, tmp_path: Path, launcher: Launcher, caplog: pytest.LogCaptureFixture
) -> None:
    def listen(i: int) -> str:
        return _tcp(i) if transport == "tcp" else f"grpc+unix://{tmp_path}/node-{i}.sock"

    caplog.set_level(logging.INFO, logger="builder.remote.client")
    with (
        fleet_of(tmp_path, launcher, listen, 3) as fleet,
        RemoteBuilder(fleet.address(), retry=QUICK) as remote,
    ):
        names = {n.name for n in fleet.nodes}
        seen: list[str] = []
        # Builders join the rotation as their connections come up; once all
        # did, round robin hands each of the next builds to another one.
        builds = 0
        while set(seen) != names:
            assert builds < 40, f"only {sorted(set(seen))} of {sorted(names)} got builds"
            seen.append(_build(remote, fleet, f"echo {builds} > /nix/store/out").builder)
            builds += 1
        rotation = [
            _build(remote, fleet, f"echo {builds + i} > /nix/store/out").builder
            for i in range(len(names))
        ]
        assert sorted(rotation) == sorted(names)
    logged = [r for r in caplog.records if getattr(r, "builder", None) in names]
    assert {r.builder for r in logged} == names  # type: ignore[attr-defined]


def _until_all_seen(remote: RemoteBuilder, fleet: Fleet) -> None:
    """Build until every builder took one: then each has its connection up and is in the
    rotation, so which builder gets the next call no longer depends on connection timing."""
    names = {n.name for n in fleet.nodes}
    seen: set[str] = set()
    for i in range(40):
        if seen == names:
            return
        seen.add(_build(remote, fleet, f"echo warm-up {i} > /nix/store/out").builder)
    raise AssertionError(f"only {sorted(seen)} of {sorted(names)} got builds")


def test_a_busy_builder_refuses_and_the_build_is_retried_on_another(
    tmp_path: Path, launcher: Launcher, caplog: pytest.LogCaptureFixture
) -> None:
    marker = sleep_marker(600)
    with (
        fleet_of(tmp_path, launcher, _tcp, 2, job_slots=1, queue_length=0) as fleet,
        RemoteBuilder(fleet.address(), retry=QUICK) as remote,
    ):
        busy, free = fleet.nodes
        _until_all_seen(remote, fleet)
        caplog.set_level(logging.INFO, logger="builder.remote.client")
        # Keep one builder's only job slot taken, with no queue behind it.
        blocker_channel = open_channel(busy.address)
        blocker = events_grpc.BuildEventsStub(blocker_channel).StreamBuild(
            request_to_proto(_request(f"{marker}; echo x > /nix/store/out"), Family.SNIX)
        )
        try:
            wait_for(lambda: processes_with(marker), "the blocking build to run")
            # Round robin sends one of any two calls to the busy builder.
            outcomes = [_build(remote, fleet, f"echo {i} > /nix/store/out") for i in range(2)]
        finally:
            blocker.cancel()
            blocker_channel.close()
            wait_for(lambda: not processes_with(marker), "the blocking build to be killed")
    assert all(o.builder == free.name for o in outcomes)
    # A refused build's retry goes to the next builder in the rotation: the free one.
    assert {(o.failed_on, o.retries) for o in outcomes} <= {((), 0), ((busy.name,), 1)}
    assert any(o.failed_on for o in outcomes)
    refusals = [r for r in caplog.records if getattr(r, "code", None) == "RESOURCE_EXHAUSTED"]
    refused = [name for o in outcomes for name in o.failed_on]
    assert [r.builder for r in refusals] == refused  # type: ignore[attr-defined]


def test_retries_are_bounded(
    tmp_path: Path, launcher: Launcher, caplog: pytest.LogCaptureFixture
) -> None:
    marker = sleep_marker(600)
    caplog.set_level(logging.INFO, logger="builder.remote.client")
    with fleet_of(tmp_path, launcher, _tcp, 1, job_slots=1, queue_length=0) as fleet:
        [busy] = fleet.nodes
        blocker_channel = open_channel(busy.address)
        blocker = events_grpc.BuildEventsStub(blocker_channel).StreamBuild(
            request_to_proto(_request(f"{marker}; echo x > /nix/store/out"), Family.SNIX)
        )
        try:
            wait_for(lambda: processes_with(marker), "the blocking build to run")
            policy = RetryPolicy(retries=2, total_seconds=60.0, first_delay=0.01, max_delay=0.02)
            with (
                RemoteBuilder(fleet.address(), retry=policy) as remote,
                pytest.raises(ResourceExhaustedError, match="RESOURCE_EXHAUSTED"),
            ):
                _build(remote, fleet, "echo y > /nix/store/out")
        finally:
            blocker.cancel()
            blocker_channel.close()
            wait_for(lambda: not processes_with(marker), "the blocking build to be killed")
    refusals = [r for r in caplog.records if getattr(r, "code", None) == "RESOURCE_EXHAUSTED"]
    # The first attempt and two retries, each refused by the one builder there is.
    assert [r.builder for r in refusals] == [busy.name] * 3  # type: ignore[attr-defined]
    assert "no retries left" in refusals[-1].getMessage()


def test_an_unhealthy_builder_gets_no_builds(tmp_path: Path, launcher: Launcher) -> None:
    with fleet_of(tmp_path, launcher, _tcp, 2) as fleet:
        draining, healthy = fleet.nodes
        draining.bound.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        with RemoteBuilder(fleet.address(), retry=QUICK) as remote:
            # Round robin would give every second build to a builder it counted healthy.
            for i in range(4):
                assert _build(remote, fleet, f"echo {i} > /nix/store/out").builder == healthy.name
            # The same builder, serving again, is back in the rotation.
            draining.bound.health.set("", health_pb2.HealthCheckResponse.SERVING)
            got: list[str] = []
            wait_for(
                lambda: (
                    got.append(_build(remote, fleet, f"echo {len(got)} > /nix/store/out").builder)
                    or draining.name in got
                ),
                "the builder serving again to get a build",
            )


def test_a_fleet_with_no_healthy_builder_says_so(tmp_path: Path, launcher: Launcher) -> None:
    with fleet_of(tmp_path, launcher, _tcp, 2) as fleet:
        for node in fleet.nodes:
            node.bound.health.enter_graceful_shutdown()
        policy = RetryPolicy(retries=1, total_seconds=60.0, first_delay=0.01, max_delay=0.02)
        with (
            RemoteBuilder(fleet.address(), retry=policy) as remote,
            pytest.raises(UnavailableError) as raised,
        ):
            _build(remote, fleet, "echo x > /nix/store/out")
    assert "UNAVAILABLE: no server is serving builds; ipv4:127.0.0.1:" in str(raised.value)
    assert "is draining or unhealthy" in str(raised.value)


def test_a_draining_builder_still_answers_castore_calls(tmp_path: Path, launcher: Launcher) -> None:
    with fleet_of(tmp_path, launcher, _tcp, 1) as fleet:
        [draining] = fleet.nodes
        draining.bound.health.enter_graceful_shutdown()
        with RemoteBuilder(fleet.address(), retry=QUICK) as remote:
            writer = remote.castore.blobs.open_write()
            writer.write(b"stored after the drain began")
            digest = writer.close()
            assert fleet.store.blobs.has(digest)
            assert remote.castore.blobs.has(digest)


def test_do_build_names_its_builder_too(tmp_path: Path, launcher: Launcher) -> None:
    with fleet_of(tmp_path, launcher, _tcp, 1) as fleet:
        [node] = fleet.nodes
        channel = open_channel(node.address)
        try:
            request = request_to_proto(_request("echo x > /nix/store/out"), Family.SNIX)
            _, call = snix_rpc.BuildServiceStub(channel).DoBuild.with_call(request, timeout=60)
        finally:
            channel.close()
    assert (NODE_KEY, node.name) in call.initial_metadata()


def test_a_channel_to_an_unreachable_list_fails_with_unavailable(tmp_path: Path) -> None:
    channel = open_channel("grpc+unix://" + f"{tmp_path}/a.sock,{tmp_path}/b.sock")
    stub = events_grpc.BuildEventsStub(channel)
    call = stub.StreamBuild(request_to_proto(_request("true"), Family.SNIX), timeout=30)
    with pytest.raises(grpc.RpcError) as raised:
        list(call)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()

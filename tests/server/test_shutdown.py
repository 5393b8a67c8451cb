"""A real ``builder serve`` stopped by signals: it drains builds, then cancels what is left.

Each server is its own process started from a ``--config`` file. The tests
order events by states they observe: the build's Started event on the stream,
its sleep process, health turning NOT_SERVING, the process exiting. A build
that should complete while the server drains waits in a long ``sleep`` the
test kills from the host when it is done checking, so the drain never races
the checks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from builder.castore.digest import Digest
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.wire import Family
from builder.executor.request import request_to_proto
from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.proto.tvix.build.protos import rpc_build_pb2_grpc as tvix_rpc
from tests.isolation import sleep_marker
from tests.nixserve.serve_client import ServeClient, add_busybox, settings, shell_derivation
from tests.processes import processes_with
from tests.server.test_build_grpc import _request
from tests.waiting import wait_for

CALL_TIMEOUT = 120.0
EXIT_TIMEOUT = 120.0


class Server:
    """``builder serve --config FILE`` on a unix socket, its log kept in a file."""

    def __init__(self, tmp_path: Path, grace: float, settings: str = "") -> None:
        self.socket = tmp_path / "builder.sock"
        self.data = tmp_path / "data"
        config = tmp_path / "serve.toml"
        config.write_text(
            f'listen = ["grpc+unix://{self.socket}"]\n'
            'data_dir = "data"\n'
            "no_result_cache = true\n"
            f"shutdown_grace = {grace}\n{settings}"
        )
        self.log = tmp_path / "serve.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "builder", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        wait_for(lambda: self.health() == health_pb2.HealthCheckResponse.SERVING, "serving")

    def health(self, service: str = "") -> int | None:
        assert self.process.poll() is None, f"server exited:\n{self.log.read_text()}"
        try:
            return (
                health_pb2_grpc.HealthStub(self.channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                .status
            )
        except grpc.RpcError:
            return None

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self) -> int:
        return self.process.wait(EXIT_TIMEOUT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_TIMEOUT)
        self.channel.close()


Start = Callable[..., Server]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[Server] = []

    def server(grace: float, settings: str = "") -> Server:
        started.append(Server(tmp_path, grace, settings))
        return started[-1]

    yield server
    for each in started:
        each.close()


def _stream(server: Server, script: str) -> Iterator[object]:
    request = request_to_proto(_request(script), Family.SNIX)
    return events_grpc.BuildEventsStub(server.channel).StreamBuild(request, timeout=CALL_TIMEOUT)


def _started(stream: Iterator[object]) -> None:
    first = next(stream)
    assert first.WhichOneof("event") == "started"  # type: ignore[attr-defined]


def _rest(stream: Iterator[object]) -> tuple[list[object], grpc.RpcError | None]:
    events = []
    try:
        events.extend(stream)
    except grpc.RpcError as error:
        return events, error
    return events, None


def _end_sleep(marker: str) -> None:
    """Kill the build's sleep, not the shell whose command line carries the marker too,
    so that the build goes on to its next command."""
    (sleeping,) = [p for p in processes_with(marker) if os.path.basename(p.cmdline()[0]) == "sleep"]
    sleeping.kill()


def _gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def _no_work_trees(data: Path) -> bool:
    """No build's work dir (``builds/OWNER/BUILD``) is left."""
    return not any(tree.is_dir() for tree in (data / "build" / "builds").glob("*/*"))


def test_sigterm_drains_a_running_build_and_refuses_new_ones(start: Start) -> None:
    server = start(60)
    marker = sleep_marker(600)
    stream = _stream(server, f"{marker}; echo drained > /nix/store/out")
    _started(stream)
    wait_for(lambda: processes_with(marker), "the build to run")
    children = server.descendants()

    server.signal(signal.SIGTERM)
    for name in ("", "snix.build.v1.BuildService", "tvix.castore.v1.BlobService"):
        wait_for(
            lambda name=name: server.health(name) == health_pb2.HealthCheckResponse.NOT_SERVING,
            f"health of {name!r} to turn NOT_SERVING",
        )
    refused = [
        lambda r: snix_rpc.BuildServiceStub(server.channel).DoBuild(
            request_to_proto(r, Family.SNIX), timeout=CALL_TIMEOUT
        ),
        lambda r: tvix_rpc.BuildServiceStub(server.channel).DoBuild(
            request_to_proto(r, Family.TVIX), timeout=CALL_TIMEOUT
        ),
        lambda r: list(
            events_grpc.BuildEventsStub(server.channel).StreamBuild(
                request_to_proto(r, Family.SNIX), timeout=CALL_TIMEOUT
            )
        ),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError) as caught:
            call(_request("echo new > /nix/store/out"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "server is shutting down" in caught.value.details()
    # Other calls go on while the build drains.
    blobs = castore_rpc(Family.SNIX).blobstore_grpc.BlobServiceStub(server.channel)
    request = castore_rpc(Family.SNIX).blobstore.StatBlobRequest(digest=Digest.of(b"x"))
    with pytest.raises(grpc.RpcError) as caught:
        blobs.Stat(request, timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.process.poll() is None

    _end_sleep(marker)
    events, error = _rest(stream)
    assert error is None, error
    assert events[-1].WhichOneof("event") == "completed"  # type: ignore[attr-defined]
    assert server.wait() == 0
    assert _gone(children)
    assert _no_work_trees(server.data)
    assert not server.socket.exists()
    log = server.log.read_text()
    assert "shutting down" in log
    assert "every build has ended" in log


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_cancels_running_builds_at_once(
    start: Start, second: signal.Signals
) -> None:
    server = start(600)
    marker = sleep_marker(600)
    stream = _stream(server, f"{marker}; echo never > /nix/store/out")
    _started(stream)
    wait_for(lambda: processes_with(marker), "the build to run")
    children = server.descendants()

    server.signal(signal.SIGTERM)
    wait_for(lambda: server.health() == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
    assert processes_with(marker)
    server.signal(second)
    _, error = _rest(stream)
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "server is shutting down" in error.details()
    assert server.wait() == 0
    assert processes_with(marker) == []
    assert _gone(children)
    assert _no_work_trees(server.data)
    assert "second signal" in server.log.read_text()


def test_builds_still_running_after_the_grace_are_cancelled(start: Start) -> None:
    server = start(1)
    marker = sleep_marker(600)
    stream = _stream(server, f"{marker}; echo never > /nix/store/out")
    _started(stream)
    wait_for(lambda: processes_with(marker), "the build to run")
    children = server.descendants()

    server.signal(signal.SIGTERM)
    _, error = _rest(stream)
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "server is shutting down" in error.details()
    assert server.wait() == 0
    assert processes_with(marker) == []
    assert _gone(children)
    assert "grace period over" in server.log.read_text()


def test_nix_handoff_builds_are_refused_while_builds_drain(start: Start, tmp_path: Path) -> None:
    server = start(60, 'nix_handoff = "nix.sock"\n')
    client = ServeClient(f"handoff+unix://{tmp_path / 'nix.sock'}")
    marker = sleep_marker(600)
    try:
        client.handshake()
        busybox = add_busybox(client)
        drv_path, out, drv = shell_derivation(busybox, "echo built > $out")
        stream = _stream(server, f"{marker}; echo drained > /nix/store/out")
        _started(stream)
        wait_for(lambda: processes_with(marker), "the build to run")

        server.signal(signal.SIGTERM)
        wait_for(
            lambda: server.health() == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING"
        )
        result = client.build_derivation(drv_path, drv, settings())
        assert result.status != 0
        assert "server is shutting down" in result.message
        # The session itself is still served: the store answers.
        assert client.query_valid([busybox, out]) == [busybox]
        assert client.finish()[0] == 0
    finally:
        client.kill()
    _end_sleep(marker)
    _, error = _rest(stream)
    assert error is None, error
    assert server.wait() == 0
    assert not (tmp_path / "nix.sock").exists()

"""Uploads and work trees of a server killed with SIGKILL are removed by the next start.

Real ``builder serve`` processes share a data directory; each state the tests
depend on (an upload's temporary file growing, a build's work tree existing,
a server answering health checks) is observed, never assumed after a sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from builder.castore.grpc.stubs import castore_rpc
from builder.castore.wire import Family
from builder.executor.request import request_to_proto
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.server.test_build_grpc import _request
from tests.waiting import wait_for

TIMEOUT = 60.0
PIECE = os.urandom(1 << 20)


class Server:
    """One ``builder serve`` on the shared data directory."""

    def __init__(self, data: Path, name: str) -> None:
        self.socket = data.parent / f"{name}.sock"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "builder",
                "serve",
                "--listen",
                f"grpc+unix://{self.socket}",
                "--data-dir",
                str(data),
                "--no-result-cache",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        wait_for(self._serving, f"{name} to serve")

    def _serving(self) -> bool:
        assert self.process.poll() is None, "server exited"
        try:
            health = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
        return health.status == health_pb2.HealthCheckResponse.SERVING

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)
        self.channel.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(TIMEOUT)
        self.channel.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    started: list[Server] = []

    def start(name: str) -> Server:
        server = Server(tmp_path / "data", name)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


class Upload:
    """A streaming Put that sends until released, so that it stays in progress."""

    def __init__(self, server: Server) -> None:
        self.release = threading.Event()
        self.sent = 0
        self.limit = 1 << 62
        stub = castore_rpc(Family.TVIX).blobstore_grpc.BlobServiceStub(server.channel)
        chunk = castore_rpc(Family.TVIX).blobstore.BlobChunk
        self.future = stub.Put.future(self._pieces(chunk), timeout=TIMEOUT * 4)

    def _pieces(self, chunk: type) -> Iterator[object]:
        while not self.release.is_set() and self.sent < self.limit:
            yield chunk(data=PIECE)
            self.sent += len(PIECE)
        self.release.wait()

    def finish(self) -> None:
        self.limit = self.sent
        self.release.set()


def _temporaries(data: Path) -> list[Path]:
    """Every file under the store's temporary directory, however it is laid out."""
    tmp = data / "blobs" / "tmp"
    return [Path(d) / name for d, _, names in os.walk(tmp) for name in names]


def _large(data: Path) -> list[Path]:
    return [p for p in _temporaries(data) if p.stat().st_size >= 64 << 20]


def test_upload_of_a_killed_server_is_removed_at_restart(
    servers: Callable[[str], Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = servers("first")
    upload = Upload(first)
    wait_for(lambda: _large(data), "a large temporary upload")
    (left,) = _large(data)
    first.kill()
    upload.release.set()
    assert left.exists()
    servers("second")
    wait_for(lambda: not left.exists(), "the upload to be removed")
    assert _temporaries(data) == []


def test_live_server_keeps_its_upload_when_another_starts(
    servers: Callable[[str], Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = servers("first")
    upload = Upload(first)
    wait_for(lambda: _temporaries(data), "a temporary upload")
    (in_progress,) = _temporaries(data)
    servers("second")
    assert in_progress.exists()
    upload.finish()
    assert len(upload.future.result(TIMEOUT).digest) == 32
    assert _temporaries(data) == []


def test_work_tree_of_a_killed_server_is_removed_at_restart(
    servers: Callable[[str], Server], tmp_path: Path
) -> None:
    builds = tmp_path / "data" / "build" / "builds"
    first = servers("first")
    marker = sleep_marker(4000 + os.getpid() % 1000)
    request = request_to_proto(_request(f"{marker}; echo x > /nix/store/out"), Family.SNIX)
    call = snix_rpc.BuildServiceStub(first.channel).DoBuild.future(request, timeout=TIMEOUT * 4)

    def work_trees() -> list[Path]:
        """Build work directories (``builds/OWNER/BUILD``)."""
        return [tree for tree in builds.glob("*/*") if tree.is_dir()]

    wait_for(lambda: work_trees() and processes_with(marker), "the build to run")
    (tree,) = work_trees()
    first.kill()
    call.cancel()
    # The sandbox dies with the server that launched it.
    wait_for(lambda: not processes_with(marker), "the build to end")
    assert tree.exists()
    servers("second")
    wait_for(lambda: not tree.exists(), "the work tree to be removed")
    assert work_trees() == []

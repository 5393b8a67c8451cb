"""Stopping a build service in plain Python: refusing new builds, draining, cancelling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.errors import UnavailableError
from builder.executor.config import BuildConfig
from builder.executor.service import BuildOutcome, BuildService, Event, Started
from builder.store.results.memory import MemoryResultCache
from sandbox import Launcher
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.server.test_build_grpc import _request
from tests.waiting import wait_for

WAIT = 120.0


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher() as started:
        yield started


@pytest.fixture
def service(tmp_path: Path, launcher: Launcher) -> Iterator[BuildService]:
    blobs = FsBlobService(tmp_path / "blobs")
    directories = SqliteDirectoryService(tmp_path / "directories.sqlite")
    config = BuildConfig(work_dir=tmp_path / "work", job_slots=1, result_cache=False)
    built = BuildService(config, blobs, directories, launcher, MemoryResultCache())
    yield built
    built.close()
    directories.close()


class Build:
    """One build on its own thread, with what it returned or raised and whether it started."""

    def __init__(self, service: BuildService, script: str) -> None:
        self.started = threading.Event()
        self.outcome: BuildOutcome | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(service, script))
        self._thread.start()

    def _run(self, service: BuildService, script: str) -> None:
        def on_event(event: Event) -> None:
            if isinstance(event, Started):
                self.started.set()

        try:
            self.outcome = service.build(_request(script), on_event)
        except BaseException as error:
            self.error = error

    def join(self) -> None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the build did not end"


def test_stopped_service_refuses_new_builds_and_lets_running_ones_finish(
    service: BuildService,
) -> None:
    marker = sleep_marker(2)
    running = Build(service, f"{marker}; echo done > /nix/store/out")
    wait_for(running.started.is_set, "the build to start")
    assert service.running == 1
    service.stop_admitting()
    with pytest.raises(UnavailableError, match="server is shutting down"):
        service.build(_request("echo never > /nix/store/out"))
    assert service.running == 1
    assert service.wait_idle(WAIT)
    running.join()
    assert running.error is None
    assert running.outcome is not None
    assert [o.path for o in running.outcome.outputs] == ["nix/store/out"]
    assert service.running == 0


def test_cancelling_ends_running_and_queued_builds_with_unavailable(
    service: BuildService,
) -> None:
    marker = sleep_marker(600)
    running = Build(service, f"{marker}; echo x > /nix/store/out")
    wait_for(lambda: running.started.is_set() and processes_with(marker), "the build to run")
    queued = Build(service, "echo y > /nix/store/out")
    wait_for(lambda: service.queued == 1, "the second build to queue")
    assert not service.wait_idle(0.05)
    assert service.cancel_running() == 2
    assert service.wait_idle(WAIT)
    for build in (running, queued):
        build.join()
        assert isinstance(build.error, UnavailableError)
        assert "server is shutting down" in str(build.error)
    assert not queued.started.is_set()
    assert processes_with(marker) == []
    with pytest.raises(UnavailableError, match="no new builds"):
        service.build(_request("echo never > /nix/store/out"))

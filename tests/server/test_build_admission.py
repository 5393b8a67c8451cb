"""Build admission over real gRPC: an exact bound, refusals at once, and a server
that keeps answering health, castore and event calls whatever the build load."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from builder.castore.grpc.stubs import castore_rpc
from builder.castore.wire import Family
from builder.executor.request import request_to_proto
from builder.proto.builder.v1 import build_events_pb2
from sandbox import Launcher
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.server.test_build_grpc import Served, _request, _serve, launcher  # noqa: F401
from tests.waiting import wait_for

# Generous: a refusal or a health check takes milliseconds, but the machine is shared;
# a call that waited for a build instead would wait for hours.
PROMPTLY = 15.0
SERVICE_CALL_TIMEOUT = 10.0


class Load:
    """Concurrent slow builds over both families and the streaming RPC."""

    def __init__(self, served: Served, marker: str, count: int) -> None:
        self.served = served
        self.marker = marker
        script = f"{marker}; echo x > /nix/store/out"
        snix = request_to_proto(_request(script), Family.SNIX)
        tvix = request_to_proto(_request(script), Family.TVIX)
        self.calls: list[grpc.Future] = []
        for i in range(count):
            kind = i % 3
            if kind == 0:
                self.calls.append(served.snix().DoBuild.future(snix, timeout=600))
            elif kind == 1:
                self.calls.append(served.tvix().DoBuild.future(tvix, timeout=600))
            else:
                self.calls.append(served.events().StreamBuild(snix, timeout=600))
        self.sent_at = time.monotonic()

    def finished(self) -> list[grpc.Future]:
        return [call for call in self.calls if call.done()]


def _cancel(served: Served, *loads: Load) -> None:
    """Cancel every call first: a queued build would start when a running one goes."""
    calls = [call for load in loads for call in load.calls]
    for call in calls:
        call.cancel()
    wait_for(lambda: all(call.done() for call in calls), "cancelled calls to end")
    markers = {load.marker for load in loads}
    wait_for(
        lambda: not any(processes_with(marker) for marker in markers),
        "cancelled builds to be killed",
    )
    wait_for(lambda: served.service.admitted == 0, "admitted builds to leave")


@pytest.fixture
def served_small(tmp_path: Path, launcher: Launcher) -> Iterator[Served]:  # noqa: F811
    yield from _serve(tmp_path, launcher, job_slots=1, queue_length=2)


@pytest.fixture
def served_default(tmp_path: Path, launcher: Launcher) -> Iterator[Served]:  # noqa: F811
    yield from _serve(tmp_path, launcher)


def _finished_build_id(served: Served) -> str:
    """The id of a build that ran to completion, for GetLog under load."""
    msg = request_to_proto(_request("echo logged-line; echo y > /nix/store/out"), Family.SNIX)
    events = list(served.events().StreamBuild(msg, timeout=60))
    assert events[-1].HasField("completed")
    return events[0].started.build_id


def _other_calls_answer_at_once(served: Served, socket: Path, build_id: str) -> None:
    """Health, a castore Stat and GetLog each answer within a second on a second channel."""
    writer = served.store.blobs.open_write()
    writer.write(b"a blob to stat while builds wait")
    digest = writer.close()
    channel = grpc.insecure_channel(f"unix:{socket}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=SERVICE_CALL_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        rpc = castore_rpc(Family.SNIX)
        blobs = rpc.blobstore_grpc.BlobServiceStub(channel)
        blobs.Stat(
            rpc.blobstore.StatBlobRequest(digest=bytes(digest)), timeout=SERVICE_CALL_TIMEOUT
        )
        events = served.events()
        chunks = events.GetLog(
            build_events_pb2.GetLogRequest(build_id=build_id), timeout=SERVICE_CALL_TIMEOUT
        )
        assert b"logged-line" in b"".join(chunk.data for chunk in chunks)
    finally:
        channel.close()


def _check_refusals(load: Load, expected: int) -> None:
    wait_for(lambda: len(load.finished()) >= expected, f"{expected} refusals", PROMPTLY)
    assert time.monotonic() - load.sent_at < PROMPTLY
    refused = load.finished()
    assert len(refused) == expected
    for call in refused:
        assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity" in call.details()


def test_exact_capacity_and_a_responsive_server(
    served_small: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served = served_small
    build_id = _finished_build_id(served)
    load = Load(served, sleep_marker(7301), 10)
    try:
        _check_refusals(load, 7)
        refusals = [r for r in caplog.records if r.getMessage() == "build refused"]
        assert [(r.levelno, r.outcome) for r in refusals] == [(logging.WARNING, "rejected")] * 7
        assert {r.family for r in refusals} == {"snix", "tvix", "stream"}
        assert all("at capacity" in r.error for r in refusals)
        wait_for(lambda: len(processes_with(load.marker)) > 0, "the admitted build to run")
        wait_for(lambda: served.service.queued == 2, "two admitted builds to queue")
        assert served.service.admitted == 3
        _other_calls_answer_at_once(served, tmp_path / "builder.sock", build_id)
        assert len(load.finished()) == 7
    finally:
        _cancel(served, load)


def test_default_capacity_refuses_exactly_the_excess(
    served_default: Served, tmp_path: Path
) -> None:
    served = served_default
    capacity = served.service.config.job_slots + served.service.config.queue_length
    build_id = _finished_build_id(served)
    load = Load(served, sleep_marker(7302), capacity + 20)
    try:
        _check_refusals(load, 20)
        wait_for(lambda: served.service.admitted == capacity, "every admitted build")
        wait_for(
            lambda: served.service.queued == served.service.config.queue_length,
            "a full queue",
        )
        _other_calls_answer_at_once(served, tmp_path / "builder.sock", build_id)
        assert len(load.finished()) == 20
    finally:
        _cancel(served, load)


def test_a_caller_that_leaves_gives_its_place_back(served_small: Served) -> None:
    served = served_small
    load = Load(served, sleep_marker(7303), 3)
    extra: Load | None = None
    try:
        wait_for(lambda: served.service.admitted == 3, "three admitted builds")
        load.calls[1].cancel()
        wait_for(lambda: served.service.admitted == 2, "the cancelled build to leave")
        extra = Load(served, sleep_marker(7303), 2)
        _check_refusals(extra, 1)
    finally:
        _cancel(served, load, *([extra] if extra else []))


def test_log_followers_are_bounded_too(tmp_path: Path, launcher: Launcher) -> None:  # noqa: F811
    gen = _serve(tmp_path, launcher, job_slots=1, log_followers=2)
    served = next(gen)
    load = Load(served, sleep_marker(7305), 0)
    try:
        msg = request_to_proto(_request(f"{load.marker}; echo x > /nix/store/out"), Family.SNIX)
        stream = served.events().StreamBuild(msg, timeout=600)
        load.calls.append(stream)
        started = next(stream)
        followers = [
            served.events().GetLog(
                build_events_pb2.GetLogRequest(build_id=started.started.build_id), timeout=600
            )
            for _ in range(2)
        ]
        load.calls.extend(followers)
        wait_for(lambda: served.service.log_followers == 2, "two log followers")
        with pytest.raises(grpc.RpcError) as info:
            list(
                served.events().GetLog(
                    build_events_pb2.GetLogRequest(build_id=started.started.build_id),
                    timeout=PROMPTLY,
                )
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "follow build logs" in info.value.details()
        health = health_pb2_grpc.HealthStub(served.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=SERVICE_CALL_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        _cancel(served, load)
        wait_for(lambda: served.service.log_followers == 0, "log followers to leave")
        next(gen, None)

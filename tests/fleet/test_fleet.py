"""Three builders on one S3 store behind one client, as the Kubernetes deployment runs them.

Each builder is a ``builder serve`` process with the ConfigMap's store
composition (S3 far store, near caches of its own) on a TCP port of loopback.
The client is given all their addresses. What a fleet promises: builds spread
over every builder, a build whose builder dies under it finishes on another,
a result one builder recorded answers the same request on another, and a
builder that joins later serves inputs uploaded through another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.wire import Family, node_to_proto
from builder.executor.request import request_from_proto
from builder.executor.service import Event, Started
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.remote.client import RemoteBuilder
from tests.fleet.fleet import (
    INPUT_NAME,
    Builder,
    CountingS3,
    build_request,
    builds_started,
    make_input,
    upload_input,
)
from tests.isolation import TOKEN, sleep_marker
from tests.processes import processes_with
from tests.requirements import require_root
from tests.waiting import wait_for

COPY = 'cat "$input/file-002" > "$out"'
EXPECTED = f"run {TOKEN} file 2\n".encode() * 3
DISTINCT_BUILDS = 30


@pytest.fixture(scope="module")
def s3() -> Iterator[CountingS3]:
    server = CountingS3()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_input(tmp_path_factory.mktemp("fleet-input") / INPUT_NAME, 5)


@pytest.fixture(scope="module")
def fleet(s3: CountingS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Builder]]:
    require_root("builds run in the sandbox, whose launcher runs as root in CI")
    root = tmp_path_factory.mktemp("fleet")
    bucket = s3.new_bucket()
    builders: list[Builder] = []
    try:
        for index in range(3):
            builders.append(Builder(root / f"builder-{index}", s3, bucket, "--jobs", "2"))
        yield builders
    finally:
        for builder in builders:
            builder.stop()


def _client(fleet: list[Builder]) -> RemoteBuilder:
    """One client for the whole fleet: every builder's address, comma-separated."""
    return RemoteBuilder("grpc+http://" + ",".join(b.address for b in fleet))


def _local_input(tree: Path) -> tuple[MemoryBlobService, MemoryDirectoryService, Any]:
    """The client's own store with the input in it, and the input's Snix entry."""
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    node = ingest_path(tree, blobs, directories, INPUT_NAME.encode())
    return blobs, directories, node_to_proto(node, Family.SNIX)


def _output_bytes(builder: Builder, response: Any) -> bytes:
    (output,) = response.outputs
    blobs = GrpcBlobService(builder.url, Family.SNIX)
    try:
        reader = blobs.open_read(output.output.file.digest)
        assert reader is not None, f"{builder.url} lacks the output it answered with"
        with reader:
            return reader.read()
    finally:
        blobs.close()


def test_distinct_builds_spread_over_every_builder(fleet: list[Builder], tree: Path) -> None:
    blobs, directories, entry = _local_input(tree)
    before = [builds_started(b) for b in fleet]
    outcomes: list[Any] = []
    errors: list[BaseException] = []
    pending = iter(range(DISTINCT_BUILDS))
    lock = threading.Lock()

    def caller(client: RemoteBuilder) -> None:
        while True:
            with lock:
                index = next(pending, None)
            if index is None:
                return
            request = request_from_proto(build_request(entry, f"spread-{index}", COPY))
            try:
                outcome = client.build(request, blobs, directories, lambda event: None)
            except BaseException as error:
                errors.append(error)
                return
            with lock:
                outcomes.append(outcome)

    with _client(fleet) as client:
        callers = [threading.Thread(target=caller, args=(client,)) for _ in range(4)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join()
    assert not errors, errors
    assert len(outcomes) == DISTINCT_BUILDS
    started = [builds_started(b) - earlier for b, earlier in zip(fleet, before, strict=True)]
    assert sum(started) == DISTINCT_BUILDS, started
    assert all(count > 0 for count in started), f"a builder got no build: {started}"
    assert {_output_bytes(fleet[0], o.response) for o in outcomes} == {EXPECTED}


def test_a_result_one_builder_recorded_answers_the_request_on_another(
    fleet: list[Builder], tree: Path
) -> None:
    entry = upload_input(fleet[0], tree)
    request = build_request(entry, f"cached-{TOKEN}", COPY)
    first = snix_rpc.BuildServiceStub(fleet[0].channel).DoBuild(request, timeout=120)
    hits = [b.metrics()["builder_result_cache_hits_total"] for b in fleet]
    again = snix_rpc.BuildServiceStub(fleet[1].channel).DoBuild(request, timeout=120)
    assert again == first
    after = [b.metrics()["builder_result_cache_hits_total"] for b in fleet]
    assert after[1] == hits[1] + 1, "the second builder built instead of answering from cache"
    assert _output_bytes(fleet[2], again) == EXPECTED


def test_a_builder_started_later_serves_inputs_uploaded_to_another(
    s3: CountingS3, fleet: list[Builder], tree: Path, tmp_path: Path
) -> None:
    entry = upload_input(fleet[2], tree)
    late = Builder(tmp_path / "late", s3, fleet[2].bucket, "--jobs", "1")
    try:
        request = build_request(entry, f"late-{TOKEN}", COPY)
        response = snix_rpc.BuildServiceStub(late.channel).DoBuild(request, timeout=120)
        assert builds_started(late) == 1
        metrics = late.metrics()
        assert metrics["builder_result_cache_hits_total"] == 0
        # Its near caches were empty: what it read of the input came from the bucket.
        assert metrics['builder_near_cache_misses_total{cache="blobs"}'] > 0
        assert metrics['builder_near_cache_misses_total{cache="directories"}'] > 0
        assert _output_bytes(late, response) == EXPECTED
    finally:
        late.stop()


def test_a_build_whose_builder_is_killed_completes_on_another(
    s3: CountingS3, tree: Path, tmp_path: Path
) -> None:
    require_root("builds run in the sandbox, whose launcher runs as root in CI")
    bucket = s3.new_bucket()
    pair = [Builder(tmp_path / f"builder-{i}", s3, bucket, "--jobs", "1") for i in range(2)]
    try:
        blobs, directories, entry = _local_input(tree)
        marker = sleep_marker(3)
        request = request_from_proto(build_request(entry, f"killed-{TOKEN}", f"{marker}; {COPY}"))
        started = threading.Event()
        finished: list[Any] = []
        failed: list[BaseException] = []

        def on_event(event: Event) -> None:
            if isinstance(event, Started):
                started.set()

        def run(client: RemoteBuilder) -> None:
            try:
                finished.append(client.build(request, blobs, directories, on_event))
            except BaseException as error:
                failed.append(error)

        with _client(pair) as client:
            thread = threading.Thread(target=run, args=(client,))
            thread.start()
            wait_for(started.is_set, "the build's Started event")
            wait_for(lambda: processes_with(marker), "the build's sleep running")
            (victim,) = [b for b in pair if b.metrics()["builder_job_slots_busy"] == 1]
            (survivor,) = [b for b in pair if b is not victim]
            victim.kill()
            thread.join(timeout=120)
        assert not thread.is_alive(), "the build never ended"
        assert not failed, failed
        (outcome,) = finished
        assert builds_started(survivor) == 1, "the survivor never ran the build"
        assert _output_bytes(survivor, outcome.response) == EXPECTED
        # The killed builder's sandbox went with it; the survivor's build ended.
        wait_for(lambda: not processes_with(marker), "no build left running")
    finally:
        for builder in pair:
            builder.stop()

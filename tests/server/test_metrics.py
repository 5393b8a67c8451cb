"""``builder serve --metrics-listen``: what a Prometheus scrape shows after real calls.

A real server process runs real builds and uploads; each step scrapes
``/metrics`` before and after and checks the change, so the counts are exact
whatever the steps before left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from builder.castore.digest import Digest
from builder.castore.nodes import FileNode
from builder.castore.wire import Family
from builder.executor.request import BuildRequest, Constraints, request_to_proto
from builder.proto.builder.v1 import blob_batches_pb2 as batches_pb2
from builder.proto.builder.v1 import blob_batches_pb2_grpc as batches_grpc
from builder.proto.tvix.build.protos import rpc_build_pb2_grpc as tvix_rpc
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2 as blobstore_pb2
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2_grpc as blobstore_grpc
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.test_cli_build_remote import ROOT, Server, serving
from tests.waiting import wait_for

METRICS_AT = re.compile(r"metrics on http://(127\.0\.0\.1:\d+)/metrics")
DO_BUILD = "/tvix.build.v1.BuildService/DoBuild"
BLOB_PUT = "/tvix.castore.v1.BlobService/Put"
BLOB_READ = "/tvix.castore.v1.BlobService/Read"
CALL_TIMEOUT = 120.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Metered:
    server: Server
    metrics_url: str
    channel: grpc.Channel

    def scrape(self) -> Samples:
        with urllib.request.urlopen(self.metrics_url, timeout=30) as response:
            assert response.status == 200
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def scrape_counted(self, before: Samples, expected: dict[tuple[str, str], int]) -> Samples:
        """A scrape once the calls made since ``before`` are counted: a call is
        counted when gRPC ends it, which may be just after its client has the answer."""
        found: list[Samples] = []

        def counted() -> bool:
            found[:] = [self.scrape()]
            return all(
                calls(found[0], method, code) - calls(before, method, code) >= count
                for (method, code), count in expected.items()
            )

        wait_for(counted, f"the server to count {expected}")
        return found[0]

    def build(self, request: BuildRequest) -> object:
        stub = tvix_rpc.BuildServiceStub(self.channel)
        return stub.DoBuild(request_to_proto(request, Family.TVIX), timeout=CALL_TIMEOUT)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def finished(samples: Samples, outcome: str) -> float:
    return value(samples, "builder_builds_finished_total", outcome=outcome)


def calls(samples: Samples, method: str, code: str) -> float:
    return value(samples, "builder_grpc_calls_total", method=method, code=code)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    tmp = tmp_path_factory.mktemp("metrics")
    socket = tmp / "builder.sock"
    options = ("--metrics-listen", "127.0.0.1:0", "--jobs", "1", "--queue", "1")
    with serving(tmp, f"grpc+unix://{socket}", *options) as server:
        found = METRICS_AT.search(server.log.read_text())
        assert found is not None, server.log.read_text()
        channel = grpc.insecure_channel(f"unix:{socket}")
        try:
            yield Metered(server, f"http://{found.group(1)}/metrics", channel)
        finally:
            channel.close()


def _request(script: str, *inputs: FileNode, system: str = "x86_64-linux") -> BuildRequest:
    return BuildRequest(
        inputs=tuple(inputs),
        command_args=("/bin/sh", "-c", script),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=("nix/store/out",),
        environment=(("PATH", b"/bin"),),
        constraints=Constraints(system=system, provide_bin_sh=True),
    )


def _put_blob(metered: Metered, data: bytes) -> FileNode:
    stub = blobstore_grpc.BlobServiceStub(metered.channel)
    chunks = [blobstore_pb2.BlobChunk(data=data[:5]), blobstore_pb2.BlobChunk(data=data[5:])]
    response = stub.Put(iter(chunks), timeout=CALL_TIMEOUT)
    assert response.digest == bytes(Digest.of(data))
    return FileNode(b"input", Digest.of(data), len(data))


def test_uploads_and_reads_count_their_blob_bytes(metered: Metered) -> None:
    before = metered.scrape()
    node = _put_blob(metered, b"streamed blob contents")
    batch = [b"first batched blob", b"second"]
    batches = batches_grpc.BlobBatchesStub(metered.channel)
    batches.BatchPutBlobs(
        batches_pb2.BatchPutBlobsRequest(
            blobs=[batches_pb2.Blob(digest=bytes(Digest.of(d)), data=d) for d in batch]
        ),
        timeout=CALL_TIMEOUT,
    )
    read = b"".join(
        chunk.data
        for chunk in blobstore_grpc.BlobServiceStub(metered.channel).Read(
            blobstore_pb2.ReadBlobRequest(digest=bytes(node.digest)), timeout=CALL_TIMEOUT
        )
    )
    batches.BatchReadBlobs(
        batches_pb2.BatchReadBlobsRequest(digests=[bytes(Digest.of(batch[0]))]),
        timeout=CALL_TIMEOUT,
    )
    batch_put = "/builder.v1.BlobBatches/BatchPutBlobs"
    after = metered.scrape_counted(
        before, {(BLOB_PUT, "OK"): 1, (BLOB_READ, "OK"): 1, (batch_put, "OK"): 1}
    )

    received = len(b"streamed blob contents") + sum(len(d) for d in batch)
    assert change(before, after, "builder_castore_received_bytes_total") == received
    assert change(before, after, "builder_castore_blobs_stored_total") == 3
    sent = len(read) + len(batch[0])
    assert change(before, after, "builder_castore_sent_bytes_total") == sent
    assert change(before, after, "builder_grpc_calls_total", method=BLOB_PUT, code="OK") == 1
    # A streamed response counts once, when it ends, however many messages it had.
    assert change(before, after, "builder_grpc_calls_total", method=BLOB_READ, code="OK") == 1
    assert change(before, after, "builder_grpc_calls_total", method=batch_put, code="OK") == 1


def test_builds_count_by_outcome_with_their_caches(metered: Metered) -> None:
    node = _put_blob(metered, b"an input the builds read\n")
    succeeding = _request("mkdir /nix/store/out && cp /nix/store/input /nix/store/out/", node)
    failing = _request("cat /nix/store/input; exit 3", node)
    before = metered.scrape()

    metered.build(succeeding)
    with pytest.raises(grpc.RpcError) as failed:
        metered.build(failing)
    assert failed.value.code() == grpc.StatusCode.ABORTED
    metered.build(succeeding)
    with pytest.raises(grpc.RpcError) as invalid:
        metered.build(_request("true", system="no-such-system"))
    assert invalid.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = metered.scrape_counted(
        before,
        {(DO_BUILD, "OK"): 2, (DO_BUILD, "ABORTED"): 1, (DO_BUILD, "FAILED_PRECONDITION"): 1},
    )

    assert change(before, after, "builder_builds_started_total") == 4
    expected = {"succeeded": 1, "failed": 1, "cached": 1, "invalid": 1, "rejected": 0}
    for outcome, count in expected.items():
        assert finished(after, outcome) - finished(before, outcome) == count, outcome
        durations = "builder_build_duration_seconds_count"
        assert change(before, after, durations, outcome=outcome) == count, outcome
    assert change(before, after, "builder_build_duration_seconds_sum", outcome="succeeded") > 0
    # The invalid request is refused before the result cache is asked.
    assert change(before, after, "builder_result_cache_hits_total") == 1
    assert change(before, after, "builder_result_cache_misses_total") == 2
    # The first build materialises the input, the failing one finds it there,
    # and the cached repeat runs nothing.
    assert change(before, after, "builder_materialisation_cache_misses_total") == 1
    assert change(before, after, "builder_materialisation_cache_hits_total") == 1
    assert value(after, "builder_materialisation_cache_bytes") >= node.size
    assert change(before, after, "builder_grpc_calls_total", method=DO_BUILD, code="OK") == 2
    assert calls(after, DO_BUILD, "ABORTED") - calls(before, DO_BUILD, "ABORTED") == 1
    precondition = "FAILED_PRECONDITION"
    assert calls(after, DO_BUILD, precondition) - calls(before, DO_BUILD, precondition) == 1


def test_slots_queue_refusals_and_cancellations(metered: Metered) -> None:
    """One job slot and a queue of one: a running build, a queued one, a refused one."""
    sleeping = sleep_marker(300)
    stub = tvix_rpc.BuildServiceStub(metered.channel)
    before = metered.scrape()
    running = stub.DoBuild.future(
        request_to_proto(_request(f"{sleeping}; echo 1"), Family.TVIX), timeout=CALL_TIMEOUT
    )
    queued = None
    try:
        wait_for(lambda: value(metered.scrape(), "builder_job_slots_busy") == 1, "a busy slot")
        wait_for(lambda: processes_with(sleeping), "the first build to run")
        queued = stub.DoBuild.future(
            request_to_proto(_request(f"{sleeping}; echo 2"), Family.TVIX), timeout=CALL_TIMEOUT
        )
        wait_for(lambda: value(metered.scrape(), "builder_build_queue_depth") == 1, "a queue")
        with pytest.raises(grpc.RpcError) as refused:
            metered.build(_request("true"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        during = metered.scrape_counted(before, {(DO_BUILD, "RESOURCE_EXHAUSTED"): 1})
        assert value(during, "builder_job_slots") == 1
        assert change(before, during, "builder_builds_started_total") == 3
        assert finished(during, "rejected") - finished(before, "rejected") == 1
        assert (
            calls(during, DO_BUILD, "RESOURCE_EXHAUSTED")
            - calls(before, DO_BUILD, "RESOURCE_EXHAUSTED")
            == 1
        )
    finally:
        running.cancel()
        if queued is not None:
            queued.cancel()

    def cancelled_and_counted() -> bool:
        now = metered.scrape()
        return (
            finished(now, "cancelled") - finished(before, "cancelled") == 2
            and calls(now, DO_BUILD, "CANCELLED") - calls(before, DO_BUILD, "CANCELLED") == 2
        )

    wait_for(cancelled_and_counted, "both builds to end cancelled")
    wait_for(lambda: not processes_with(sleeping), "the sleeping build to be killed")

    def idle() -> bool:
        now = metered.scrape()
        return value(now, "builder_job_slots_busy") == 0 == value(now, "builder_build_queue_depth")

    wait_for(idle, "the slot and the queue to be free")


def test_unknown_methods_share_one_label(metered: Metered) -> None:
    before = metered.scrape()
    for name in ("/no.such.Service/Method", "/another.Made.Up/Name"):
        call = metered.channel.unary_unary(name)
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=CALL_TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = metered.scrape_counted(before, {("unknown", "UNIMPLEMENTED"): 2})
    assert calls(after, "unknown", "UNIMPLEMENTED") - calls(before, "unknown", "UNIMPLEMENTED") == 2
    assert not any(
        dict(labels).get("method", "").startswith(("/no.such", "/another")) for _, labels in after
    )


def test_a_bad_metrics_address_is_refused_naming_the_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "serve",
            "--listen",
            f"grpc+unix://{tmp_path}/s.sock",
            "--metrics-listen",
            "localhost",
        ],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert b"--metrics-listen 'localhost': expected HOST:PORT" in result.stderr


def test_a_build_stopped_by_a_limit_counts_as_limit(tmp_path: Path) -> None:
    socket = tmp_path / "builder.sock"
    options = ("--metrics-listen", "127.0.0.1:0", "--timeout", "1")
    with serving(tmp_path, f"grpc+unix://{socket}", *options) as server:
        found = METRICS_AT.search(server.log.read_text())
        assert found is not None, server.log.read_text()
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            metered = Metered(server, f"http://{found.group(1)}/metrics", channel)
            with pytest.raises(grpc.RpcError) as stopped:
                metered.build(_request(sleep_marker(300)))
            assert "wall_time limit" in (stopped.value.details() or "")
            after = metered.scrape()
    assert finished(after, "limit") == 1
    assert finished(after, "failed") == 0
    assert value(after, "builder_build_duration_seconds_count", outcome="limit") == 1
    assert value(after, "builder_build_duration_seconds_sum", outcome="limit") >= 1

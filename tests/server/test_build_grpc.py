"""DoBuild end to end over a real unix socket, with clients of both families."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.composition import Composition, Registry
from builder.castore.digest import Digest
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from builder.castore.wire import Family
from builder.executor.config import BuildConfig, BuildLimits
from builder.executor.request import BuildRequest, Constraints, request_to_proto
from builder.executor.service import BuildService
from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.proto.tvix.build.protos import rpc_build_pb2_grpc as tvix_rpc
from builder.server.app import create_server
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.results.memory import MemoryResultCache
from builder.store.store import Store
from sandbox import Launcher
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.waiting import wait_for


@dataclass
class Served:
    channel: grpc.Channel
    store: Store
    service: BuildService
    work: Path

    def tvix(self) -> tvix_rpc.BuildServiceStub:
        return tvix_rpc.BuildServiceStub(self.channel)

    def snix(self) -> snix_rpc.BuildServiceStub:
        return snix_rpc.BuildServiceStub(self.channel)

    def events(self) -> events_grpc.BuildEventsStub:
        return events_grpc.BuildEventsStub(self.channel)


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    with Launcher() as started:
        yield started


def _serve(tmp_path: Path, launcher: Launcher, **config: object) -> Iterator[Served]:
    blobs, directories = FsBlobService(tmp_path / "blobs"), SqliteDirectoryService(tmp_path / "d")
    pathinfos = SqlitePathInfoService(tmp_path / "pathinfo.sqlite")
    store = Store(blobs, directories, pathinfos, MemoryResultCache(), Composition({}, Registry()))
    work = tmp_path / "work"
    service = BuildService(
        BuildConfig(work_dir=work, **config), blobs, directories, launcher, store.results
    )
    socket = tmp_path / "builder.sock"
    bound = create_server(store, service, [f"grpc+unix://{socket}"])
    bound.server.start()
    channel = grpc.insecure_channel(f"unix:{socket}")
    try:
        yield Served(channel, store, service, work)
    finally:
        channel.close()
        bound.server.stop(5).wait()
        service.close()
        pathinfos.close()


@pytest.fixture
def served(tmp_path: Path, launcher: Launcher) -> Iterator[Served]:
    yield from _serve(tmp_path, launcher)


def _request(
    script: str, inputs: tuple = (), outputs: tuple = ("nix/store/out",), **kw: object
) -> BuildRequest:
    return BuildRequest(
        inputs=inputs,
        command_args=("/bin/sh", "-c", script),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=outputs,
        environment=(("PATH", b"/bin"),),
        constraints=kw.pop("constraints", Constraints(system="x86_64-linux", provide_bin_sh=True)),
        **kw,
    )


def _input(served: Served, tmp_path: Path, name: str = "aaa-src") -> DirectoryNode:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "msg").write_text("hello from aaa-src\n")
    node = ingest_path(src, served.store.blobs, served.store.directories, name.encode())
    assert isinstance(node, DirectoryNode)
    return node


def test_tvix_build_with_input_and_needles(served: Served, tmp_path: Path) -> None:
    src = _input(served, tmp_path)
    request = _request(
        "mkdir /nix/store/out && cp /nix/store/aaa-src/msg /nix/store/out/copy && "
        "ln -s /nix/store/aaa-src /nix/store/out/link && echo done > /nix/store/other",
        inputs=(src,),
        outputs=("nix/store/other", "nix/store/out"),
        refscan_needles=("aaa-src", "absent", "done"),
    )
    msg = request_to_proto(request, Family.TVIX)
    response = served.tvix().DoBuild(msg, timeout=60)
    assert response.build_request == msg
    assert [n.WhichOneof("node") for n in response.outputs] == ["file", "directory"]
    assert response.outputs[0].file.name == b"other"
    assert response.outputs[1].directory.name == b"out"
    assert [list(n.needles) for n in response.outputs_needles] == [[2], [0]]
    tree = served.store.directories.get(Digest(response.outputs[1].directory.digest))
    assert tree is not None
    assert {n.name for n in tree.entries()} == {b"copy", b"link"}


def test_snix_build(served: Served) -> None:
    response = served.snix().DoBuild(
        request_to_proto(_request("echo hi > /nix/store/out"), Family.SNIX), timeout=60
    )
    (output,) = response.outputs
    assert output.output.file.name == b"out"
    assert output.output.file.size == 3


def test_invalid_request_names_field(served: Served) -> None:
    msg = request_to_proto(_request("true", outputs=("elsewhere/out",)), Family.SNIX)
    with pytest.raises(grpc.RpcError) as info:
        served.snix().DoBuild(msg, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outputs[0]" in info.value.details()


def test_missing_inputs_named(served: Served) -> None:
    ghost = FileNode(b"ghost", Digest.of(b"never stored"), 12)
    with pytest.raises(grpc.RpcError) as info:
        served.tvix().DoBuild(
            request_to_proto(_request("true", inputs=(ghost,)), Family.TVIX), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(ghost.digest) in info.value.details()


def test_unsupported_system(served: Served) -> None:
    request = _request("true", constraints=Constraints(system="mips-plan9"))
    with pytest.raises(grpc.RpcError) as info:
        served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "constraints.system" in info.value.details()


def test_failed_build_reports_exit_code_and_log(served: Served) -> None:
    request = _request("echo first line; echo 'something broke' >&2; exit 3")
    with pytest.raises(grpc.RpcError) as info:
        served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "exited with code 3" in info.value.details()
    assert "something broke" in info.value.details()


def test_missing_output_is_a_failure(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.snix().DoBuild(request_to_proto(_request("true"), Family.SNIX), timeout=60)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "'nix/store/out' was not produced" in info.value.details()


def test_stream_events_and_result_cache(served: Served) -> None:
    msg = request_to_proto(_request("echo progress; echo x > /nix/store/out"), Family.SNIX)
    events = list(served.events().StreamBuild(msg, timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert not events[0].started.cached
    assert b"progress" in b"".join(e.log.data for e in events if e.HasField("log"))
    again = list(served.events().StreamBuild(msg, timeout=60))
    assert again[0].started.cached
    assert again[-1].completed.response == events[-1].completed.response


def test_stream_reports_failure_details(served: Served) -> None:
    msg = request_to_proto(_request("exit 7"), Family.SNIX)
    events = list(served.events().StreamBuild(msg, timeout=60))
    assert events[-1].failed.exit_code == 7
    assert "exited with code 7" in events[-1].failed.message


def test_concurrent_builds_share_inputs(served: Served, tmp_path: Path) -> None:
    src = _input(served, tmp_path)
    results: list[bytes] = []

    def build(i: int) -> None:
        request = _request(f"cat /nix/store/aaa-src/msg > /nix/store/out; echo {i}", inputs=(src,))
        response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
        results.append(response.outputs[0].output.file.digest)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert len(set(results)) == 1
    stats = served.service.cache.stats()
    assert stats.fills == 1
    assert stats.trees == 1
    assert stats.in_use == 0


@pytest.fixture(params=[None, 64 << 20], ids=["bound-scratch", "capped-scratch"])
def either(request: pytest.FixtureRequest, tmp_path: Path, launcher: Launcher) -> Iterator[Served]:
    """A server whose scratch dirs are bound from the host, or capped and copied back."""
    yield from _serve(tmp_path, launcher, limits=BuildLimits(scratch_bytes=request.param))


def test_input_mount_targets_are_not_part_of_an_output(either: Served, tmp_path: Path) -> None:
    """Inputs mounted inside an output leave only what the build wrote in it."""
    served = either
    src = _input(served, tmp_path)
    ingest = ingest_path(tmp_path / "src" / "msg", served.store.blobs, served.store.directories)
    assert isinstance(ingest, FileNode)
    file_input = FileNode(b"one-file", ingest.digest, ingest.size)
    # The inputs dir is made by the server, so the build cannot write
    # beside it: it only reads the inputs, and the output is what is left.
    script = "cat /nix/store/out/deps/aaa-src/msg /nix/store/out/deps/one-file"
    request = dataclasses.replace(
        _request(script, inputs=(src, file_input)), inputs_dir="nix/store/out/deps"
    )
    response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    tree = served.store.directories.get(Digest(response.outputs[0].output.directory.digest))
    assert tree is not None
    assert [n.name for n in tree.entries()] == [b"deps"]
    (deps,) = tree.directories
    assert served.store.directories.get(deps.digest) == Directory()


def test_symlink_inputs_inside_a_scratch_path_are_seen(either: Served, tmp_path: Path) -> None:
    """Nix's layout: a symlink input sits in /nix/store among the outputs, capped or not."""
    served = either
    src = _input(served, tmp_path)
    link = SymlinkNode(b"bbb-link", b"aaa-src/msg")
    request = _request("cat /nix/store/bbb-link > /nix/store/out", inputs=(src, link))
    response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    with served.store.blobs.open_read(Digest(response.outputs[0].output.file.digest)) as out:
        assert out.read() == b"hello from aaa-src\n"


def cut_sleep_short(marker: str) -> None:
    """Kill the ``sleep`` a build script waits in, so that the script goes on to its end."""
    sleeps = [p for p in processes_with(marker) if p.info["cmdline"] == marker.split()]
    assert sleeps, f"no {marker!r} is running"
    for process in sleeps:
        process.kill()


def test_client_cancel_kills_build(served: Served) -> None:
    """The build would sleep for over an hour; its client cancelling ends it.

    How promptly is a figure of tests/benchmarks/bench_build.py.
    """
    marker = sleep_marker(4171)
    msg = request_to_proto(_request(f"{marker}; echo x > /nix/store/out"), Family.SNIX)
    future = served.snix().DoBuild.future(msg, timeout=600)
    wait_for(lambda: processes_with(marker), "the build to start")
    future.cancel()
    wait_for(lambda: not processes_with(marker), "the build to end after its client cancelled")
    builds = served.work / "builds"
    wait_for(
        lambda: not [tree for owner in builds.iterdir() for tree in owner.iterdir()],
        "the cancelled build's work directory to be removed",
    )


def test_queue_overflow(tmp_path: Path, launcher: Launcher) -> None:
    gen = _serve(tmp_path, launcher, job_slots=1, queue_length=1)
    served = next(gen)
    try:
        marker = sleep_marker(4174)
        slow = request_to_proto(_request(f"{marker}; echo x > /nix/store/out"), Family.SNIX)
        running = served.snix().DoBuild.future(slow, timeout=600)
        wait_for(lambda: processes_with(marker), "the first build to run")
        queued = served.snix().DoBuild.future(
            request_to_proto(_request("echo y > /nix/store/out"), Family.SNIX), timeout=600
        )
        wait_for(lambda: served.service.queued == 1, "the second build to queue")
        with pytest.raises(grpc.RpcError) as info:
            served.snix().DoBuild(
                request_to_proto(_request("echo z > /nix/store/out"), Family.SNIX), timeout=60
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        cut_sleep_short(marker)
        assert running.result().outputs
        assert queued.result().outputs
    finally:
        next(gen, None)


def test_limits_reported(tmp_path: Path, launcher: Launcher) -> None:
    gen = _serve(tmp_path, launcher, limits=BuildLimits(wall_time=1.0))
    served = next(gen)
    try:
        with pytest.raises(grpc.RpcError) as info:
            served.snix().DoBuild(request_to_proto(_request("sleep 30"), Family.SNIX), timeout=60)
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert "wall_time" in info.value.details()
    finally:
        next(gen, None)

"""Every failure a client sees over gRPC has its right code, names its cause, and
is logged by the server in the build's end line, with its id; INTERNAL is left for bugs."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.composition import Composition, Registry
from builder.castore.digest import Digest
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.wire import Family
from builder.executor.config import BuildConfig
from builder.executor.request import request_to_proto
from builder.executor.service import BuildService
from builder.server.app import create_server
from builder.server.assembly import assemble_server
from builder.server.status import INTERNAL_MESSAGE, rpc_errors
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.results.memory import MemoryResultCache
from builder.store.store import Store
from sandbox import Launcher
from tests.server.test_build_grpc import Served, _request, _serve, launcher  # noqa: F401
from tests.server.test_castore_disk_full import SPACE, small_disk  # noqa: F401

BUILD_ID = "[0-9a-f]{32}"


@pytest.fixture
def served(tmp_path: Path, launcher: Launcher) -> Iterator[Served]:  # noqa: F811
    yield from _serve(tmp_path, launcher)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="builder")
    return caplog


def _logged(logs: pytest.LogCaptureFixture, pattern: str) -> logging.LogRecord:
    found = [r for r in logs.records if re.search(pattern, r.getMessage())]
    assert found, f"no log record matches {pattern!r}: {[r.getMessage() for r in logs.records]}"
    return found[0]


def _build_ended(
    logs: pytest.LogCaptureFixture, family: str, outcome: str, error: str, build_id: str = BUILD_ID
) -> logging.LogRecord:
    """The end line of a build of ``family`` with that outcome and an error matching ``error``."""
    ends = [r for r in logs.records if r.getMessage() in ("build finished", "build refused")]
    found = [
        r
        for r in ends
        if (r.family, r.outcome) == (family, outcome)
        and re.fullmatch(build_id, r.build_id)
        and re.search(error, r.error)
    ]
    assert found, f"no {outcome} end of a {family} build: {[r.__dict__ for r in ends]}"
    return found[0]


def _do_build_fails(served: Served, request: Any, family: Family = Family.SNIX) -> grpc.RpcError:
    stub = served.snix() if family is Family.SNIX else served.tvix()
    with pytest.raises(grpc.RpcError) as info:
        stub.DoBuild(request_to_proto(request, family), timeout=60)
    return info.value


def test_a_request_the_sandbox_refuses_is_invalid_argument(
    served: Served, logs: pytest.LogCaptureFixture
) -> None:
    request = dataclasses.replace(_request("true"), scratch_paths=("build", "etc", "nix/store"))
    error = _do_build_fails(served, request, Family.TVIX)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/etc" in error.details()
    _build_ended(logs, "tvix", "invalid", "/etc")


def test_a_launcher_that_is_gone_is_unavailable(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    own = Launcher().start()
    gen = _serve(tmp_path, own)
    served = next(gen)
    try:
        own.stop()
        error = _do_build_fails(served, _request("echo x > /nix/store/out"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "launcher" in error.details()
        _build_ended(logs, "snix", "error", "launcher")
    finally:
        next(gen, None)
        own.stop()


def test_a_failed_build_answers_aborted_naming_its_cause(
    served: Served, logs: pytest.LogCaptureFixture
) -> None:
    error = _do_build_fails(served, _request("echo 'it broke' >&2; exit 3"))
    assert error.code() == grpc.StatusCode.ABORTED
    assert "exited with code 3" in error.details()
    assert "it broke" in error.details()
    assert _build_ended(logs, "snix", "failed", "exited with code 3").exit_code == 3


def test_a_streamed_failure_is_logged_with_the_id_the_client_saw(
    served: Served, logs: pytest.LogCaptureFixture
) -> None:
    msg = request_to_proto(_request("exit 5"), Family.SNIX)
    events = list(served.events().StreamBuild(msg, timeout=60))
    build_id = events[0].started.build_id
    assert events[-1].failed.exit_code == 5
    assert _build_ended(logs, "stream", "failed", "exited with code 5", build_id).exit_code == 5


def test_an_output_that_cannot_be_stored_fails_the_build_in_its_own_terms(
    served: Served, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    error = _do_build_fails(served, _request("mkfifo /nix/store/out"))
    assert error.code() == grpc.StatusCode.ABORTED
    assert "/nix/store/out" in error.details()
    assert "FIFO" in error.details()
    assert str(tmp_path) not in error.details()
    _build_ended(logs, "snix", "failed", "FIFO")


def test_a_missing_output_is_a_failed_event_on_the_stream(
    served: Served, logs: pytest.LogCaptureFixture
) -> None:
    msg = request_to_proto(_request("true"), Family.SNIX)
    events = list(served.events().StreamBuild(msg, timeout=60))
    failed = events[-1].failed
    assert "'nix/store/out' was not produced" in failed.message
    assert failed.exit_code == 0
    _build_ended(logs, "stream", "failed", "was not produced", events[0].started.build_id)


def test_an_output_larger_than_the_store_is_resource_exhausted_naming_the_store(
    tmp_path: Path,
    small_disk: Path,  # noqa: F811
    launcher: Launcher,  # noqa: F811
    logs: pytest.LogCaptureFixture,
) -> None:
    """The build ran fine; storing its output did not, which is the store's bound, not a bug."""
    blobs = FsBlobService(small_disk / "blobs")
    directories = SqliteDirectoryService(tmp_path / "directories.sqlite")
    pathinfos = SqlitePathInfoService(tmp_path / "pathinfo.sqlite")
    store = Store(blobs, directories, pathinfos, MemoryResultCache(), Composition({}, Registry()))
    service = BuildService(
        BuildConfig(work_dir=tmp_path / "work"), blobs, directories, launcher, store.results
    )
    socket = tmp_path / "builder.sock"
    bound = create_server(store, service, [f"grpc+unix://{socket}"])
    bound.server.start()
    channel = open_channel(f"grpc+unix://{socket}")
    try:
        served = Served(channel, store, service, tmp_path / "work")
        script = f"head -c {2 * SPACE} /dev/urandom > /nix/store/out"
        error = _do_build_fails(served, _request(script))
    finally:
        channel.close()
        bound.server.stop(5).wait()
        service.close()
        pathinfos.close()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert str(small_disk / "blobs") in error.details()
    _build_ended(logs, "snix", "rejected", re.escape(str(small_disk / "blobs")))


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("/snix.build.v1.BuildService/DoBuild", b"\x12\x02\xff\xfe"),  # bad UTF-8 in a string
        ("/tvix.build.v1.BuildService/DoBuild", b"\xff\xff\xff"),
        ("/builder.v1.BuildEvents/StreamBuild", b"\x0a\x05ab"),  # truncated field
        ("/snix.castore.v1.BlobService/Stat", b"\xff\xff"),
    ],
)
def test_an_undecodable_request_is_invalid_argument(
    served: Served, logs: pytest.LogCaptureFixture, method: str, payload: bytes
) -> None:
    if method.endswith("StreamBuild"):
        call = served.channel.unary_stream(method)
        with pytest.raises(grpc.RpcError) as info:
            list(call(payload, timeout=30))
    else:
        with pytest.raises(grpc.RpcError) as info:
            served.channel.unary_unary(method)(payload, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in info.value.details()
    _logged(logs, rf"^{re.escape(method)} from \S+: undecodable request")


def test_an_undecodable_message_in_an_upload_stream_is_invalid_argument(served: Served) -> None:
    rpc = castore_rpc(Family.SNIX)
    chunks = [rpc.blobstore.BlobChunk(data=b"fine so far").SerializeToString(), b"\xff\xff"]
    put = served.channel.stream_unary("/snix.castore.v1.BlobService/Put")
    with pytest.raises(grpc.RpcError) as info:
        put(iter(chunks), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BlobChunk" in info.value.details()
    assert not served.store.blobs.has(Digest.of(b"fine so far"))


class _Servicer:
    """Methods that fail in every way the error wrapper must tell apart."""

    @rpc_errors
    def Abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours to read")
        return b""

    @rpc_errors
    def AbortStreaming(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        context.abort(grpc.StatusCode.OUT_OF_RANGE, "past the end")

    @rpc_errors
    def Bug(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise KeyError("secret detail")


@pytest.fixture
def wrapped() -> Iterator[grpc.Channel]:
    servicer = _Servicer()

    def add_wrapped(server: grpc.Server) -> list[str]:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Wrapped",
                    {
                        "Abort": grpc.unary_unary_rpc_method_handler(servicer.Abort),
                        "AbortStreaming": grpc.unary_stream_rpc_method_handler(
                            servicer.AbortStreaming
                        ),
                        "Bug": grpc.unary_unary_rpc_method_handler(servicer.Bug),
                    },
                ),
            )
        )
        return []

    server, (address,), _ = assemble_server([add_wrapped], ["grpc+http://127.0.0.1:0"], 4)
    server.start()
    channel = open_channel(address)
    try:
        yield channel
    finally:
        channel.close()
        server.stop(None).wait()


def test_an_abort_inside_the_wrapper_keeps_its_code_and_message(wrapped: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        wrapped.unary_unary("/test.Wrapped/Abort")(b"", timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "not yours to read"

    responses = wrapped.unary_stream("/test.Wrapped/AbortStreaming")(b"", timeout=30)
    assert next(responses) == b"first"
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.details() == "past the end"


def test_a_bug_is_internal_and_logged_with_its_traceback(
    wrapped: grpc.Channel, logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        wrapped.unary_unary("/test.Wrapped/Bug")(b"", timeout=30)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == INTERNAL_MESSAGE
    record = _logged(logs, r"_Servicer\.Bug from \S+ failed unexpectedly")
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)

"""Each call a real server answers is reported once, with the code its client received."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2 as blobstore_pb2
from builder.proto.tvix.castore.protos import rpc_blobstore_pb2_grpc as blobstore_grpc
from builder.server.assembly import assemble_server
from builder.server.call_counting import UNKNOWN_METHOD
from builder.server.castore_server import add_castore_services
from tests.waiting import wait_for

TOKEN = "call-counting-token"
SERVICE = "test.Calls"
CALL_TIMEOUT = 30.0


class Ended:
    """What the server reported, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, grpc.StatusCode]] = []

    def __call__(self, method: str, code: grpc.StatusCode) -> None:
        with self._lock:
            self.calls.append((method, code))

    def wait(self, count: int) -> list[tuple[str, grpc.StatusCode]]:
        wait_for(lambda: len(self.calls) >= count, f"{count} calls to be reported")
        return list(self.calls)


def _test_services(server: grpc.Server, stream_started: threading.Event) -> list[str]:
    """Handlers ending each way a servicer can end a call."""

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        gone = threading.Event()
        context.add_callback(gone.set)
        stream_started.set()
        yield b"first"
        gone.wait(CALL_TIMEOUT)

    def broken(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("a bug in a handler")

    def chosen(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_code(grpc.StatusCode.ALREADY_EXISTS)
        return b""

    handlers = {
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Broken": grpc.unary_unary_rpc_method_handler(broken),
        "Chosen": grpc.unary_unary_rpc_method_handler(chosen),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    return [SERVICE]


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[grpc.Channel, Ended, threading.Event]]:
    ended = Ended()
    started = threading.Event()
    socket = tmp_path / "s.sock"

    def castore(server: grpc.Server) -> list[str]:
        return add_castore_services(server, MemoryBlobService(), MemoryDirectoryService())

    bound = assemble_server(
        [castore, lambda server: _test_services(server, started)],
        [f"grpc+unix://{socket}"],
        max_workers=8,
        token=TOKEN,
        call_ended=ended,
    )
    bound.server.start()
    channel = grpc.insecure_channel(f"unix:{socket}")
    try:
        yield channel, ended, started
    finally:
        channel.close()
        bound.server.stop(5).wait()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def test_codes_of_finished_calls(counted: tuple[grpc.Channel, Ended, threading.Event]) -> None:
    channel, ended, _ = counted
    blobs = blobstore_grpc.BlobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        blobs.Put(iter([blobstore_pb2.BlobChunk(data=b"x")]), timeout=CALL_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ended.wait(1)[-1] == ("/tvix.castore.v1.BlobService/Put", refused.value.code())

    blobs.Put(iter([blobstore_pb2.BlobChunk(data=b"x")]), metadata=AUTH, timeout=CALL_TIMEOUT)
    assert ended.wait(2)[-1] == ("/tvix.castore.v1.BlobService/Put", grpc.StatusCode.OK)

    with pytest.raises(grpc.RpcError) as missing:
        list(blobs.Read(blobstore_pb2.ReadBlobRequest(digest=b"\0" * 32), metadata=AUTH))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert ended.wait(3)[-1] == ("/tvix.castore.v1.BlobService/Read", grpc.StatusCode.NOT_FOUND)

    with pytest.raises(grpc.RpcError) as broken:
        channel.unary_unary(f"/{SERVICE}/Broken")(b"", metadata=AUTH, timeout=CALL_TIMEOUT)
    assert broken.value.code() == grpc.StatusCode.UNKNOWN
    assert ended.wait(4)[-1] == (f"/{SERVICE}/Broken", grpc.StatusCode.UNKNOWN)

    with pytest.raises(grpc.RpcError) as chosen:
        channel.unary_unary(f"/{SERVICE}/Chosen")(b"", metadata=AUTH, timeout=CALL_TIMEOUT)
    assert chosen.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert ended.wait(5)[-1] == (f"/{SERVICE}/Chosen", grpc.StatusCode.ALREADY_EXISTS)

    with pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary("/made.Up/Call")(b"", metadata=AUTH, timeout=CALL_TIMEOUT)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert ended.wait(6)[-1] == (UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED)
    assert len(ended.calls) == 6


def test_a_stream_the_client_drops_counts_once_as_cancelled(
    counted: tuple[grpc.Channel, Ended, threading.Event],
) -> None:
    channel, ended, started = counted
    responses = channel.unary_stream(f"/{SERVICE}/Stream")(b"", metadata=AUTH, timeout=CALL_TIMEOUT)
    assert next(responses) == b"first"
    assert started.is_set()
    assert ended.calls == []
    responses.cancel()
    assert ended.wait(1) == [(f"/{SERVICE}/Stream", grpc.StatusCode.CANCELLED)]
    # The handler winds down after the call ended; that is not a second report.
    health = channel.unary_unary("/grpc.health.v1.Health/Check")
    health(b"", timeout=CALL_TIMEOUT)
    calls = ended.wait(2)
    assert calls[1] == ("/grpc.health.v1.Health/Check", grpc.StatusCode.OK)
    assert len(calls) == 2

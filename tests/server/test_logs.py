"""What a real ``builder serve`` writes to its log, read back line by line.

Each server here is a subprocess with its stderr in a file: JSON lines are
parsed and their fields checked, text lines matched as a whole. The builds
are real; the clients are real gRPC stubs on the server's socket.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import blake3
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.endpoint import suggested_url
from builder.castore.grpc.security import ChannelSecurity
from builder.castore.grpc.status import error_from_rpc
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.nodes import DirectoryNode
from builder.castore.wire import Family, directory_to_proto
from builder.errors import BuilderError
from builder.executor.request import BuildRequest, request_to_proto
from builder.proto.builder.v1 import blob_batches_pb2 as batches_pb2
from builder.proto.builder.v1 import blob_batches_pb2_grpc as batches_grpc
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.proto.tvix.build.protos import rpc_build_pb2_grpc as tvix_rpc
from builder.remote.errors import remote_error
from tests.castore.backends_objectstore import new_s3_url, s3_options
from tests.isolation import TOKEN, sleep_marker
from tests.processes import processes_with
from tests.requirements import require_root
from tests.server.test_build_grpc import _request
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BEARER = f"logs-test-token-{TOKEN}"
BUILD_ID = re.compile("[0-9a-f]{32}")
# gRPC's C core writes glog-style lines: a severity letter, then the date.
C_CORE_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (DEBUG|INFO|WARNING|ERROR) +[a-z_.]+: .+"
)


def _environment(**changes: str | None) -> dict[str, str]:
    """This process's environment, less gRPC's verbosity unless a test sets it."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class Running:
    address: str
    process: subprocess.Popen[bytes]
    log: Path

    def channel(self, token: str | None = None) -> grpc.Channel:
        return open_channel(self.address, ChannelSecurity(token=token))

    def text(self) -> str:
        return self.log.read_text()

    def events(self) -> list[dict[str, Any]]:
        """Every line as JSON; a line that is not JSON fails the test."""
        return [json.loads(line) for line in self.text().splitlines() if line]

    def events_where(self, **fields: object) -> list[dict[str, Any]]:
        return [e for e in self.events() if all(e.get(k) == v for k, v in fields.items())]

    def wait_for_event(self, **fields: object) -> dict[str, Any]:
        wait_for(lambda: self.events_where(**fields), f"a log line with {fields}")
        return self.events_where(**fields)[-1]


@contextmanager
def _serving(tmp: Path, *options: str) -> Iterator[Running]:
    """A ``builder serve`` on a unix socket, ready once its health check answers.

    Readiness is not read from the log, so that a server told to log only
    warnings can be waited for too.
    """
    sock = tmp / "builder.sock"
    log = tmp / "server.log"
    env = _environment(BUILDER_DATA_DIR=str(tmp / "data"))
    address = f"grpc+unix://{sock}"
    command = [sys.executable, "-m", "builder", "serve", "--listen", address, *options]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stderr=sink, cwd=ROOT)
    running = Running(address, process, log)
    try:
        health = health_pb2_grpc.HealthStub(running.channel())

        def serving() -> bool:
            assert process.poll() is None, log.read_text()
            if not sock.exists():
                return False
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError:
                return False
            return answer.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, "the server to answer health checks")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_root("the server's builds run in sandboxes")
    tmp = tmp_path_factory.mktemp("json-server")
    token_file = tmp / "token"
    token_file.write_text(BEARER)
    with _serving(tmp, "--log-format", "json", "--token-file", str(token_file)) as running:
        yield running


def _snix(running: Running) -> snix_rpc.BuildServiceStub:
    return snix_rpc.BuildServiceStub(running.channel(BEARER))


def _unique(script: str) -> BuildRequest:
    """A request no earlier test built, so that the result cache cannot answer it."""
    return _request(f"{script}; : {os.urandom(8).hex()}")


def _ended(running: Running, family: str, outcome: str) -> dict[str, Any]:
    return running.wait_for_event(message="build finished", family=family, outcome=outcome)


def _check_lifecycle(running: Running, end: dict[str, Any]) -> None:
    """A build's end line has a start line with the same id, peer and family before it."""
    assert BUILD_ID.fullmatch(end["build_id"])
    assert end["peer"]
    assert isinstance(end["duration_seconds"], float | int) and end["duration_seconds"] >= 0
    starts = running.events_where(message="build started", build_id=end["build_id"])
    assert [(s["peer"], s["family"], s["level"]) for s in starts] == [
        (end["peer"], end["family"], "info")
    ]
    assert starts[0]["logger"] == end["logger"] == "builder.executor.reporting"


def test_start_line_names_addresses_store_and_jobs(json_server: Running) -> None:
    [start] = json_server.events_where(logger="builder.server.app")
    assert start["level"] == "info"
    assert start["listen"] == [json_server.address]
    assert start["store"].startswith("fs:///")
    assert isinstance(start["jobs"], int) and start["jobs"] >= 1
    assert start["token"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", start["timestamp"])


def test_start_line_names_the_store_without_its_credentials(tmp_path: Path) -> None:
    """Credentials an object store address carries as options never reach the log."""
    require_root("the server's builds run in sandboxes")
    options = s3_options()
    secret = f"secret_access_key={options['secret_access_key']}"
    address = f"objectstore+{new_s3_url()}?{urlencode(options)}"
    with _serving(tmp_path, "--log-format", "json", "--store", address) as running:
        [start] = running.events_where(logger="builder.server.app")
    assert secret not in running.text()
    assert start["store"].startswith("objectstore+s3://")
    assert "secret_access_key=" in start["store"]
    assert f"endpoint={quote(options['endpoint'], safe='')}" in start["store"]


def test_succeeded_then_cached(json_server: Running) -> None:
    request = _unique("echo done > /nix/store/out")
    message = request_to_proto(request, Family.SNIX)
    _snix(json_server).DoBuild(message, timeout=120)
    first = _ended(json_server, "snix", "succeeded")
    _check_lifecycle(json_server, first)
    assert first["level"] == "info"

    _snix(json_server).DoBuild(message, timeout=120)
    again = _ended(json_server, "snix", "cached")
    _check_lifecycle(json_server, again)
    assert again["build_id"] != first["build_id"]


def test_failed_build_names_its_exit_code(json_server: Running) -> None:
    request = _unique("echo broken; exit 3")
    tvix = tvix_rpc.BuildServiceStub(json_server.channel(BEARER))
    with pytest.raises(grpc.RpcError):
        tvix.DoBuild(request_to_proto(request, Family.TVIX), timeout=120)
    end = _ended(json_server, "tvix", "failed")
    _check_lifecycle(json_server, end)
    assert end["exit_code"] == 3
    assert "exited with code 3" in end["error"]


def test_invalid_request_is_its_own_outcome(json_server: Running) -> None:
    request = dataclasses.replace(_unique("true"), scratch_paths=("build", "etc", "nix/store"))
    with pytest.raises(grpc.RpcError) as info:
        _snix(json_server).DoBuild(request_to_proto(request, Family.SNIX), timeout=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    end = _ended(json_server, "snix", "invalid")
    assert "/etc" in end["error"]


def test_a_client_that_goes_away_cancels_the_build(json_server: Running) -> None:
    marker = sleep_marker(4321)
    request = _unique(f"{marker}; echo x > /nix/store/out")
    call = _snix(json_server).DoBuild.future(request_to_proto(request, Family.SNIX), timeout=120)
    wait_for(lambda: processes_with(marker), "the build to run")
    call.cancel()
    end = _ended(json_server, "snix", "cancelled")
    _check_lifecycle(json_server, end)
    wait_for(lambda: not processes_with(marker), "the cancelled build to stop")


def test_streamed_build_is_logged_once_and_as_it_ended(json_server: Running) -> None:
    """The client hangs up once it has the result; the build still succeeded."""
    from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc

    stub = events_grpc.BuildEventsStub(json_server.channel(BEARER))
    message = request_to_proto(_unique("echo hi > /nix/store/out"), Family.SNIX)
    events = list(stub.StreamBuild(message, timeout=120))
    build_id = events[0].started.build_id
    end = json_server.wait_for_event(message="build finished", build_id=build_id)
    assert (end["family"], end["outcome"]) == ("stream", "succeeded")
    assert len(json_server.events_where(build_id=build_id)) == 2


def test_refused_token_is_a_warning_without_the_token(json_server: Running) -> None:
    wrong = f"not-the-token-{TOKEN}"
    for token in (None, wrong):
        with pytest.raises(grpc.RpcError) as info:
            _snix_with(json_server, token).DoBuild(
                request_to_proto(_unique("true"), Family.SNIX), timeout=60
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wait_for(lambda: len(json_server.events_where(message="call refused")) >= 2, "two refusals")
    refusals = json_server.events_where(message="call refused")
    assert {r["reason"] for r in refusals} >= {"no authorization header", "wrong bearer token"}
    for refusal in refusals:
        assert refusal["level"] == "warning"
        assert refusal["method"] == "/snix.build.v1.BuildService/DoBuild"
        assert refusal["peer"]
    assert wrong not in json_server.text()
    assert BEARER not in json_server.text()


def _snix_with(running: Running, token: str | None) -> snix_rpc.BuildServiceStub:
    return snix_rpc.BuildServiceStub(running.channel(token))


def test_uploads_are_summarised_per_batch_and_closure(json_server: Running) -> None:
    channel = json_server.channel(BEARER)
    blobs = [os.urandom(100 + i) for i in range(3)]
    batches_grpc.BlobBatchesStub(channel).BatchPutBlobs(
        batches_pb2.BatchPutBlobsRequest(
            blobs=[batches_pb2.Blob(digest=blake3.blake3(b).digest(), data=b) for b in blobs]
        ),
        timeout=60,
    )
    batch = json_server.wait_for_event(message="blob batch stored")
    assert (batch["count"], batch["bytes"], batch["level"]) == (3, 303, "info")
    assert batch["peer"]

    rpc = castore_rpc(Family.SNIX)
    single = os.urandom(64)
    rpc.blobstore_grpc.BlobServiceStub(channel).Put(
        iter([rpc.blobstore.BlobChunk(data=single)]), timeout=60
    )
    leaf = Directory()
    root = Directory(directories=(DirectoryNode(b"a", leaf.digest, leaf.size),))
    messages = [directory_to_proto(d, Family.SNIX) for d in (leaf, root)]
    rpc.directory_grpc.DirectoryServiceStub(channel).Put(iter(messages), timeout=60)
    closure = json_server.wait_for_event(message="directories stored")
    assert closure["root"] == str(root.digest)
    assert closure["count"] == 2
    assert closure["bytes"] == sum(m.ByteSize() for m in messages)
    # A single small blob is a debug line, not shown at info.
    assert not json_server.events_where(digest=str(Digest.of(single)))


def test_one_shot_commands_print_plain_lines_unless_asked(
    json_server: Running, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(BEARER)
    hello = str(ROOT / "examples" / "hello.json")
    remote = ("build", "--remote", json_server.address, "--token-file", str(token_file), hello)
    plain = _builder(*remote, data=tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    assert re.search(r"^builder: uploaded \d+ blobs", plain.stderr, re.MULTILINE), plain.stderr
    assert not TEXT_LINE.search(plain.stderr)

    structured = _builder(*remote, "--log-format", "json", data=tmp_path / "json")
    assert structured.returncode == 0, structured.stderr
    uploaded = [
        json.loads(line)
        for line in structured.stderr.splitlines()
        if line.startswith("{") and "uploaded" in line
    ]
    assert [(e["logger"], e["level"]) for e in uploaded] == [("builder.remote.client", "info")]


def test_every_line_is_json(json_server: Running) -> None:
    lines = [line for line in json_server.text().splitlines() if line]
    assert lines
    for line in lines:
        event = json.loads(line)
        assert list(event)[:4] == ["timestamp", "level", "logger", "message"]
    assert not C_CORE_LINE.search(json_server.text())


def test_text_format_is_one_line_per_event(tmp_path: Path) -> None:
    require_root("the server's builds run in sandboxes")
    with _serving(tmp_path) as running:
        stub = snix_rpc.BuildServiceStub(running.channel())
        stub.DoBuild(request_to_proto(_unique("echo t > /nix/store/out"), Family.SNIX), timeout=120)
        finished = re.compile(
            r".* INFO +builder\.executor\.reporting: build finished "
            r"build_id=[0-9a-f]{32} peer=\S+ family=snix outcome=succeeded "
            r"duration_seconds=[0-9.]+"
        )
        wait_for(lambda: finished.search(running.text()), "the build's end line")
    lines = running.text().splitlines()
    assert lines
    for line in lines:
        assert TEXT_LINE.fullmatch(line), line
    assert re.search(
        rf"INFO +builder\.server\.app: listening on {re.escape(running.address)} ", lines[0]
    )
    assert any(line.endswith("builder.server.running: shut down") for line in lines)


def test_warning_level_hides_info_lines(tmp_path: Path) -> None:
    require_root("the server's builds run in sandboxes")
    options = ("--log-format", "json", "--log-level", "warning", "--timeout", "1")
    with _serving(tmp_path, *options) as running:
        stub = snix_rpc.BuildServiceStub(running.channel())
        with pytest.raises(grpc.RpcError):
            stub.DoBuild(
                request_to_proto(_unique("sleep 30; echo > /nix/store/out"), Family.SNIX),
                timeout=120,
            )
        end = running.wait_for_event(message="build finished", outcome="limit")
    assert end["level"] == "warning"
    assert end["limit"] == "wall_time"
    assert {e["level"] for e in running.events()} == {"warning"}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _castore_serve(port: int, *options: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """A castore server that cannot bind: gRPC's C core reports that on stderr itself."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "castore",
            "serve",
            "--store",
            "memory://",
            "--listen",
            f"grpc+http://127.0.0.1:{port}",
            *options,
        ],
        env=_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_grpc_core_is_silent_below_debug(busy_port: int) -> None:
    quiet = _castore_serve(busy_port)
    assert quiet.returncode != 0
    assert f"cannot listen on grpc+http://127.0.0.1:{busy_port}" in quiet.stderr
    assert "GRPC_VERBOSITY" not in quiet.stderr
    assert not C_CORE_LINE.search(quiet.stderr), quiet.stderr
    # The same failure does make the core print, at debug and when the user asks for it.
    loud = _castore_serve(busy_port, "--log-level", "debug")
    assert C_CORE_LINE.search(loud.stderr), loud.stderr
    chosen = _castore_serve(busy_port, GRPC_VERBOSITY="ERROR")
    assert C_CORE_LINE.search(chosen.stderr), chosen.stderr


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("unix:///run/builder.sock", "grpc+unix:///run/builder.sock"),
        ("unix:/run/builder.sock", "grpc+unix:///run/builder.sock"),
        ("http://localhost:8000", "grpc+http://localhost:8000"),
        ("https://builder.example:443", "grpc+https://builder.example:443"),
        ("localhost:1234", "grpc+http://localhost:1234"),
        ("[::1]:1234", "grpc+http://[::1]:1234"),
        ("dns:///builder.example:80", "grpc+http://builder.example:80"),
        ("fs:///var/lib/builder", None),
        ("store.toml", None),
        ("grpc+unix:///run/builder.sock", None),
    ],
)
def test_suggested_url(given: str, meant: str | None) -> None:
    assert suggested_url(given) == meant


def _builder(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        env=_environment(BUILDER_DATA_DIR=str(data)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "meant"),
    [
        (("build", "--remote", "unix:///tmp/b.sock"), "grpc+unix:///tmp/b.sock"),
        (("build", "--remote", "localhost:1234"), "grpc+http://localhost:1234"),
        (("castore", "cat", "--store", "unix:///tmp/b.sock"), "grpc+unix:///tmp/b.sock"),
        (("castore", "cat", "--store", "localhost:1234"), "grpc+http://localhost:1234"),
        (("castore", "serve", "--listen", "unix:///tmp/b.sock"), "grpc+unix:///tmp/b.sock"),
    ],
)
def test_did_you_mean(args: tuple[str, ...], meant: str, tmp_path: Path) -> None:
    operands = {
        "build": [str(ROOT / "examples" / "hello.json")],
        "cat": [str(Digest.of(b""))],
        "serve": [],
    }
    command = args[1] if args[0] == "castore" else args[0]
    result = _builder(*args, *operands[command], data=tmp_path)
    assert result.returncode != 0
    assert f"did you mean {meant!r}?" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_server_reads_plainly(tmp_path: Path) -> None:
    dead = f"grpc+unix://{tmp_path}/nobody.sock"
    result = _builder(
        "build", "--remote", dead, str(ROOT / "examples" / "hello.json"), data=tmp_path
    )
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert line == (
        f"builder: error: {dead}: UNAVAILABLE: cannot connect to unix:{tmp_path}/nobody.sock: "
        "No such file or directory"
    )


def _abort_with(code: grpc.StatusCode) -> Any:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(code, "")
        raise AssertionError("context.abort returned")

    return grpc.unary_unary_rpc_method_handler(handler)


@pytest.fixture(scope="module")
def terse_server() -> Iterator[str]:
    """A real server whose calls fail without a message: one of them with OK, which
    gRPC delivers as UNKNOWN, the code of a call that ended without a status."""
    handlers = {"Ok": _abort_with(grpc.StatusCode.OK)}
    handlers["NotFound"] = _abort_with(grpc.StatusCode.NOT_FOUND)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Terse", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc+http://127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    ("method", "says"),
    [
        ("Ok", "the call ended without a status from the server"),
        ("NotFound", "the server answered NOT_FOUND without saying why"),
    ],
)
def test_no_message_ends_in_a_bare_status(terse_server: str, method: str, says: str) -> None:
    channel = open_channel(terse_server)
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(f"/t.Terse/{method}")(b"", timeout=60)
    assert "debug_error_string" in str(info.value)
    for error in (error_from_rpc(info.value), remote_error(info.value, terse_server)):
        message = str(error)
        assert isinstance(error, BuilderError)
        assert message.endswith(says), message
        assert "debug_error_string" not in message
        assert not re.search(r": [A-Z_]+$", message), message

"""``builder build --remote`` against a real ``builder serve`` subprocess."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from builder.castore.grpc.channel import open_channel
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.server.test_build_constraints import NETWORK_PROBE, host_listener
from tests.test_cli_output import check_readable_outputs, shapes_request  # noqa: F401
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LISTENING = re.compile(r"listening on (\S+)")


@dataclass
class Server:
    address: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def serving(
    tmp: Path,
    listen: str,
    *options: str,
    user: int | None = None,
    python: str = sys.executable,
    pythonpath: str | None = None,
) -> Iterator[Server]:
    """Start ``builder serve`` and learn its address (and port, for port 0) from its log.

    With ``user`` (uid and gid alike) a root caller starts it as an ordinary
    user, whose launcher is then rootless; ``python`` and ``pythonpath`` must
    then be what that user can run and read.
    """
    log = tmp / "server.log"
    env = {**os.environ, "BUILDER_DATA_DIR": str(tmp / "server-data")}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [python, "-m", "builder", "serve", "--listen", listen, *options],
            env=env,
            stdout=sink,
            stderr=sink,
            cwd=ROOT,
            user=user,
            group=user,
            extra_groups=None if user is None else [],
        )
    try:

        def listening() -> re.Match[str] | None:
            assert process.poll() is None, log.read_text()
            return LISTENING.search(log.read_text())

        wait_for(listening, "the server to listen")
        found = listening()
        assert found is not None
        yield Server(found.group(1), process, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    with serving(tmp, f"grpc+unix://{tmp}/builder.sock") as started:
        yield started


def build(remote: str, *args: str, data: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "build", "--remote", remote, *args],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )


def _request_file(tmp: Path, script: str, name: str = "req.json", network: bool = False) -> Path:
    path = tmp / name
    constraints = {"system": "x86_64-linux", "provideBinSh": True, "networkAccess": network}
    path.write_text(
        json.dumps(
            {
                "commandArgs": ["/bin/sh", "-c", script],
                "workingDir": "build",
                "scratchPaths": ["build", "nix/store"],
                "inputsDir": "nix/store",
                "outputs": ["nix/store/out"],
                "constraints": constraints,
            }
        )
    )
    return path


def test_hello(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(
        server.address, str(EXAMPLES / "hello.toml"), "--json", "--out", str(out), data=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert b"Hello, world!" in result.stderr
    response = json.loads(result.stdout)
    assert "directory" in response["outputs"][0]["output"]
    hello = out / "00000000000000000000000000000000-hello" / "bin" / "hello"
    assert subprocess.run([hello], capture_output=True).stdout == b"Hello, world!\n"
    assert hello.stat().st_mode & 0o777 == 0o555

    # The same request in protobuf JSON.
    again = build(server.address, str(EXAMPLES / "hello.json"), "--json", data=tmp_path)
    assert again.returncode == 0, again.stderr
    assert b"answered from the result cache" in again.stderr
    assert json.loads(again.stdout) == response


def test_host_paths_of_a_toml_request_are_uploaded(server: Server, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "msg").write_text("named by the request\n")
    request = project / "req.toml"
    request.write_text(
        """
command_args = ["/bin/sh", "-c", "cat /nix/store/src/msg > /nix/store/out"]
working_dir = "build"
scratch_paths = ["build", "nix/store"]
inputs_dir = "nix/store"
outputs = ["nix/store/out"]
constraints = { system = "x86_64-linux", provide_bin_sh = true }
inputs = { src = { path = "src" } }
"""
    )
    out = tmp_path / "o"
    result = build(server.address, str(request), "--out", str(out), data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"uploaded 1 blobs (21 bytes) and 1 directories" in result.stderr
    assert (out / "out").read_text() == "named by the request\n"


def test_import_uploads_only_what_the_server_lacks(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "msg").write_text("from the client's host\n")
    (src / "sub" / "more").write_text("nested\n")
    script = "cat /nix/store/src/msg /nix/store/src/sub/more > /nix/store/out"
    request = _request_file(tmp_path, script)
    out = tmp_path / "o1"
    first = build(
        server.address, str(request), "--import", f"src={src}", "--out", str(out), data=tmp_path
    )
    assert first.returncode == 0, first.stderr
    assert b"uploaded 2 blobs (30 bytes) and 2 directories" in first.stderr
    assert (tmp_path / "imports.sqlite").is_file(), "imports consult the data dir's record"
    assert (out / "out").read_text() == "from the client's host\nnested\n"

    # Same input, another build, a fresh local store: the server has it all.
    other = _request_file(tmp_path, f"{script}; echo again >> /nix/store/out", "other.json")
    out = tmp_path / "o2"
    second = build(
        server.address,
        str(other),
        "--import",
        f"src={src}",
        "--out",
        str(out),
        data=tmp_path / "fresh",
    )
    assert second.returncode == 0, second.stderr
    assert b"uploaded 0 blobs (0 bytes) and 0 directories" in second.stderr
    assert (out / "out").read_text() == "from the client's host\nnested\nagain\n"

    # One file changed: one blob and the directory holding it, up to the root.
    (src / "sub" / "more").write_text("changed\n")
    third = build(server.address, str(request), "--import", f"src={src}", data=tmp_path)
    assert third.returncode == 0, third.stderr
    assert b"uploaded 1 blobs (8 bytes) and 2 directories" in third.stderr


def test_shared_subtrees_travel_leaves_first(server: Server, tmp_path: Path) -> None:
    """A directory met at depth 1 and again at depth 3: reversing a breadth-first
    walk would send its deeper parent before it, which servers refuse."""
    src = tmp_path / "src"
    for where in (src / "same", src / "deep" / "inner" / "same"):
        where.mkdir(parents=True)
        (where / "f").write_text("shared\n")
    script = (
        "cp -r /nix/store/src /nix/store/out && chmod -R u+w /nix/store/out && "
        "for d in /nix/store/out/same /nix/store/out/deep/inner/same; do echo built > $d/f; done"
    )
    request = _request_file(tmp_path, script)
    out = tmp_path / "out"
    result = build(
        server.address, str(request), "--import", f"src={src}", "--out", str(out), data=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert b"uploaded 1 blobs (7 bytes) and 4 directories" in result.stderr
    assert b"fetched 1 blobs (6 bytes) and 4 directories" in result.stderr
    assert (out / "out" / "deep" / "inner" / "same" / "f").read_text() == "built\n"
    assert (out / "out" / "same" / "f").read_text() == "built\n"


def test_failed_build_exits_non_zero_with_message(server: Server, tmp_path: Path) -> None:
    request = _request_file(tmp_path, "echo oops; exit 4")
    result = build(server.address, str(request), data=tmp_path)
    assert result.returncode == 100
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert "oops" in stderr
    assert "builder: error: build failed: exited with code 4" in stderr


def test_a_missing_output_fails_the_build_with_exit_100(server: Server, tmp_path: Path) -> None:
    request = _request_file(tmp_path, "true")
    result = build(server.address, str(request), data=tmp_path)
    assert result.returncode == 100, result.stderr
    assert "'nix/store/out' was not produced" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_readable_results_and_json(
    server: Server,
    tmp_path: Path,
    shapes_request: Path,  # noqa: F811
) -> None:
    out = tmp_path / "out"
    readable = build(server.address, str(shapes_request), "--out", str(out), data=tmp_path)
    assert readable.returncode == 0, readable.stderr
    as_json = build(server.address, str(shapes_request), "--json", data=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    check_readable_outputs(readable.stdout.decode(), as_json.stdout.decode())
    assert (out / "b-file").stat().st_size == 2048


def test_invalid_request_is_refused_before_anything_is_sent(server: Server, tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text('{"commandArgs": ["true"], "workingDir": "/abs"}')
    result = build(server.address, str(request), data=tmp_path)
    assert result.returncode == 2
    assert "working_dir" in result.stderr.decode()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_cancels_the_remote_build(
    server: Server, tmp_path: Path, signum: signal.Signals
) -> None:
    marker = sleep_marker(4100 + signum)
    request = _request_file(tmp_path, f"{marker}; echo x > /nix/store/out")
    client = subprocess.Popen(
        [sys.executable, "-m", "builder", "build", "--remote", server.address, str(request)],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:

        def started() -> bool:
            assert client.poll() is None, client.communicate()
            return bool(processes_with(marker))

        wait_for(started, "the remote build to start")
        client.send_signal(signum)
        _, stderr = client.communicate(timeout=60)
    finally:
        client.kill()
    assert client.returncode == 128 + signum
    assert f"interrupted by {signum.name}" in stderr.decode()
    wait_for(lambda: not processes_with(marker), "the remote build to end with its client")


def test_unreachable_server(tmp_path: Path) -> None:
    result = build(
        f"grpc+unix://{tmp_path}/nobody.sock", str(EXAMPLES / "hello.json"), data=tmp_path
    )
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr.decode()


@pytest.mark.parametrize(
    ("remote", "options", "message"),
    [
        ("http://127.0.0.1:1", (), "unsupported scheme"),
        ("grpc+http://127.0.0.1:1", ("--tls-ca", "README.md"), "TLS settings need"),
        ("grpc+https://127.0.0.1:1", ("--tls-cert", "README.md"), "go together"),
    ],
)
def test_bad_remote_options(
    tmp_path: Path, remote: str, options: tuple[str, ...], message: str
) -> None:
    result = build(remote, str(EXAMPLES / "hello.json"), *options, data=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_reflection_lists_every_service(server: Server) -> None:
    channel = open_channel(server.address)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    finally:
        channel.close()
    names = {service.name for service in answer.list_services_response.service}
    assert {
        "tvix.build.v1.BuildService",
        "snix.build.v1.BuildService",
        "builder.v1.BuildEvents",
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "snix.castore.v1.BlobService",
        "snix.castore.v1.DirectoryService",
        "grpc.health.v1.Health",
    } <= names


# Network access


def test_network_access_needs_the_operators_consent(server: Server, tmp_path: Path) -> None:
    request = _request_file(tmp_path, "echo x > /nix/store/out", network=True)
    result = build(server.address, str(request), data=tmp_path)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "constraints.network_access: this builder does not allow network access" in stderr
    assert "--allow-network" in stderr


def test_allow_network_lets_a_build_reach_the_host(tmp_path: Path) -> None:
    with serving(tmp_path, f"grpc+unix://{tmp_path}/builder.sock", "--allow-network") as started:
        with host_listener() as (port, accepted):
            script = NETWORK_PROBE.format(port=port)
            request = _request_file(tmp_path, script, network=True)
            out = tmp_path / "out"
            result = build(started.address, str(request), "--out", str(out), data=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (out / "out").read_text() == "yes\n"
        assert accepted == [b"reached\n"]


# Bearer token


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("token")
    (tmp / "token").write_text("s3cret-token\n")
    token = ("--token-file", str(tmp / "token"))
    with serving(tmp, f"grpc+unix://{tmp}/builder.sock", *token) as started:
        yield started


def test_token_required(token_server: Server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_text("through an authenticated upload\n")
    request = _request_file(tmp_path, "cat /nix/store/src > /nix/store/out")
    args = (str(request), "--import", f"src={src}", "--out", str(tmp_path / "out"))

    anonymous = build(token_server.address, *args, data=tmp_path)
    assert anonymous.returncode == 1
    assert "UNAUTHENTICATED: missing or wrong bearer token" in anonymous.stderr.decode()

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    refused = build(token_server.address, *args, "--token-file", str(wrong), data=tmp_path)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr.decode()

    right = tmp_path / "right"
    right.write_text("s3cret-token")
    accepted = build(token_server.address, *args, "--token-file", str(right), data=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert b"uploaded 1 blobs" in accepted.stderr
    assert (tmp_path / "out" / "out").read_text() == "through an authenticated upload\n"


def test_token_over_plaintext_tcp_is_warned_about(tmp_path: Path, token_server: Server) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    token = ("--token-file", str(tmp_path / "token"))
    with serving(tmp_path, "grpc+http://127.0.0.1:0", *token) as started:
        log = started.log.read_text()
    warning = log.index("the bearer token travels in clear text")
    assert warning < log.index("listening on")
    assert started.address.removeprefix("grpc+http://") in log[:warning]
    assert "clear text" not in token_server.log.read_text()


def test_health_needs_no_token(token_server: Server) -> None:
    channel = open_channel(token_server.address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "builder.v1.BuildEvents"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


# TLS


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with a server certificate for localhost and a client certificate."""
    tmp = tmp_path_factory.mktemp("pki")
    paths = Pki(
        *(tmp / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"))
    )
    ca_key = _write_key(tmp / "ca.key")
    ca = _certificate(
        "test CA", ca_key, None, ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True)]
    )
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True)]
    server = _certificate(
        "localhost",
        _write_key(paths.server_key),
        ca.subject,
        ca_key,
        [
            *leaf,
            (
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            ),
        ],
    )
    paths.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    client = _certificate("client", _write_key(paths.client_key), ca.subject, ca_key, leaf)
    paths.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    return paths


def _https(server: Server) -> str:
    port = server.address.rsplit(":", 1)[1]
    return f"grpc+https://localhost:{port}"


def test_tls(pki: Pki, tmp_path: Path) -> None:
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    with serving(tmp_path, "grpc+http://127.0.0.1:0", *tls) as server:
        assert server.address.startswith("grpc+http://127.0.0.1:")
        hello = str(EXAMPLES / "hello.json")

        trusted = build(_https(server), hello, "--tls-ca", str(pki.ca), data=tmp_path)
        assert trusted.returncode == 0, trusted.stderr
        assert b"Hello, world!" in trusted.stderr

        unknown_ca = build(_https(server), hello, data=tmp_path)
        assert unknown_ca.returncode == 1
        assert "UNAVAILABLE" in unknown_ca.stderr.decode()

        plaintext = build(server.address, hello, data=tmp_path)
        assert plaintext.returncode == 1
        assert "UNAVAILABLE" in plaintext.stderr.decode()


def test_tls_client_certificate(pki: Pki, tmp_path: Path) -> None:
    tls = (
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    )
    with serving(tmp_path, "grpc+http://127.0.0.1:0", *tls) as server:
        hello = str(EXAMPLES / "hello.json")
        ca = ("--tls-ca", str(pki.ca))

        anonymous = build(_https(server), hello, *ca, data=tmp_path)
        assert anonymous.returncode == 1
        assert "UNAVAILABLE" in anonymous.stderr.decode()

        client = ("--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key))
        known = build(_https(server), hello, *ca, *client, data=tmp_path)
        assert known.returncode == 0, known.stderr
        assert b"Hello, world!" in known.stderr


def test_token_and_tls_together(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tls-and-token")
    options = (
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--token-file",
        str(tmp_path / "token"),
    )
    with serving(tmp_path, "grpc+http://127.0.0.1:0", *options) as server:
        result = build(
            _https(server),
            str(EXAMPLES / "hello.json"),
            "--tls-ca",
            str(pki.ca),
            "--token-file",
            str(tmp_path / "token"),
            data=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert b"Hello, world!" in result.stderr


def test_store_configuration_reaches_a_tls_and_token_server(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("store-token")
    options = (
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--token-file", str(tmp_path / "token"),
    )  # fmt: skip
    with serving(tmp_path, "grpc+http://127.0.0.1:0", *options) as server:
        remote = {"type": "grpc", "url": _https(server), "tls_ca": str(pki.ca)}
        config = tmp_path / "store.json"

        def store(**extra: str) -> Path:
            config.write_text(
                json.dumps(
                    {
                        "blobservices": {"root": {**remote, **extra}},
                        "directoryservices": {"root": {**remote, **extra}},
                        "pathinfoservices": {"root": {**remote, **extra}},
                    }
                )
            )
            return config

        def castore(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [sys.executable, "-m", "builder", "castore", *args], capture_output=True,
                cwd=ROOT, timeout=120, check=False,
            )  # fmt: skip

        refused = castore("import", "--store", str(store()), str(EXAMPLES / "hello-tree"))
        assert refused.returncode == 1
        assert "missing or wrong bearer token" in refused.stderr.decode()

        with_token = str(store(token_file=str(tmp_path / "token")))
        imported = castore("import", "--store", with_token, str(EXAMPLES / "hello-tree"))
        assert imported.returncode == 0, imported.stderr
        digest = imported.stdout.decode().split("\t")[1].split()[1]
        restored = tmp_path / "restored"
        fetched = castore("materialise", "--store", str(config), digest, str(restored))
        assert fetched.returncode == 0, fetched.stderr
        assert (restored / "share" / "greeting.txt").read_text() == "Hello, World!\n"

        missing = castore("import", "--store", str(store(token_file=str(tmp_path / "nope"))), ".")
        assert missing.returncode == 2
        assert "token_file" in missing.stderr.decode()

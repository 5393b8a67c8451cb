"""``--store grpc+unix://...``: every path, blob and build goes to a real ``builder serve``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.isolation import sleep_marker
from tests.nixserve.serve_client import (
    ServeClient,
    add_busybox,
    settings,
    shell_derivation,
    string,
    u64,
)
from tests.processes import processes_with
from tests.requirements import require_root
from tests.test_cli_build_remote import Server, serving
from tests.waiting import wait_for

TOKEN = "serve-token-for-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_root("the server's builds run in sandboxes")
    tmp = tmp_path_factory.mktemp("server")
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    with serving(tmp, f"grpc+unix://{tmp}/builder.sock", "--token-file", str(token)) as started:
        yield started


def _client(server: Server, tmp_path: Path) -> ServeClient:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = tmp_path / "serve.toml"
    # Beside the file: a relative path is relative to it, not to the client's directory.
    config.write_text('token_file = "token"\n')
    client = ServeClient(server.address, "--config", str(config))
    client.handshake()
    return client


def test_build_through_the_server(server: Server, tmp_path: Path) -> None:
    client = _client(server, tmp_path)
    try:
        busybox = add_busybox(client)
        drv_path, out, drv = shell_derivation(busybox, f"echo remote; echo {busybox} > $out")
        result = client.build_derivation(drv_path, drv, settings())
        assert (result.status, result.message) == (0, "")
        [info] = client.query_path_infos([out])
        assert info.references == [busybox]
        contents = f"{busybox}\n".encode()
        assert contents in client.dump(out, info.nar_size)
        # The server built it: this connection started no launcher, no spare, nothing.
        assert psutil.Process(client.process.pid).children(recursive=True) == []
        code, stderr = client.finish()
        assert code == 0
        assert "remote\n" in stderr
    finally:
        client.kill()
    # The server keeps what the first connection stored.
    again = _client(server, tmp_path)
    try:
        assert again.query_valid([busybox, out]) == sorted([busybox, out], key=lambda p: p[11:])
        assert again.finish() == (0, "")
    finally:
        again.kill()


def test_limits_hold_through_the_server(server: Server, tmp_path: Path) -> None:
    client = _client(server, tmp_path)
    try:
        busybox = add_busybox(client)
        drv_path, _, drv = shell_derivation(busybox, "sleep 600")
        result = client.build_derivation(drv_path, drv, settings(timeout=1))
        assert (result.status, result.message) == (
            8,
            f"building of '{drv_path}' timed out after 1 seconds",
        )
    finally:
        client.kill()


def test_network_needs_the_servers_permission(server: Server, tmp_path: Path) -> None:
    client = _client(server, tmp_path)
    try:
        busybox = add_busybox(client)
        digest = hashlib.sha256(b"x\n").hexdigest()
        drv_path, out, drv = shell_derivation(
            busybox, "echo x > $out", "fetch", fixed=("sha256", digest)
        )
        result = client.build_derivation(drv_path, drv, settings())
        assert result.status == 9
        assert "--allow-network" in result.message
        assert client.query_valid([out]) == []
    finally:
        client.kill()


def test_hangup_cancels_the_remote_build(server: Server, tmp_path: Path) -> None:
    client = _client(server, tmp_path)
    try:
        busybox = add_busybox(client)
        marker = sleep_marker(4444)
        drv_path, _, drv = shell_derivation(busybox, marker)
        client.send(u64(8) + string(drv_path) + drv.encode() + settings())
        wait_for(lambda: processes_with(marker), "the build to start on the server")
        code, stderr = client.finish(timeout=30)
        assert code == 1
        assert "the client closed the connection" in stderr
        wait_for(lambda: not processes_with(marker), "the server's build to end", timeout=10)
    finally:
        client.kill()


def test_wrong_token_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    token = tmp_path / "wrong"
    token.write_text("not-the-token")
    client = ServeClient(server.address, env={**os.environ, "BUILDER_TOKEN_FILE": str(token)})
    try:
        client.handshake()
        client.send(u64(1) + u64(0) + u64(0) + u64(1) + string("/nix/store/" + "0" * 32 + "-x"))
        code, stderr = client.finish()
        assert code == 1
        assert stderr.startswith("error: "), stderr
        assert "wrong bearer token" in stderr
    finally:
        client.kill()

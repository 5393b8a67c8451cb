"""``builder build --remote`` over several ``builder serve`` processes sharing one store:
a build whose builder is killed mid-build completes on another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import psutil

from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.test_cli_build_remote import (
    ROOT,
    Pki,
    Server,
    build,
    pki,  # noqa: F401
    serving,
)
from tests.waiting import wait_for


def _runs_under(process: psutil.Process, server: Server) -> bool:
    return server.process.pid in {p.pid for p in process.parents()}


def _fleet(stack: ExitStack, tmp: Path, count: int, *options: str) -> list[Server]:
    servers = []
    for i in range(count):
        home = tmp / f"node-{i}"
        home.mkdir()
        servers.append(
            stack.enter_context(
                serving(home, "grpc+http://127.0.0.1:0", "--node-name", f"node-{i}", *options)
            )
        )
    return servers


def _list_address(servers: list[Server]) -> str:
    return "grpc+http://" + ",".join(s.address.removeprefix("grpc+http://") for s in servers)


def test_a_build_cut_off_by_a_killed_builder_completes_on_another(tmp_path: Path) -> None:
    shared = tmp_path / "shared-store"
    gate = tmp_path / "gate"
    gate.mkdir()
    marker = sleep_marker(600)
    # The first attempt waits; once the gate file exists, any attempt finishes at once.
    script = f"if [ -e {gate}/open ]; then cat /nix/store/src > /nix/store/out; else {marker}; fi"
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "commandArgs": ["/bin/sh", "-c", script],
                "workingDir": "build",
                "scratchPaths": ["build", "nix/store"],
                "inputsDir": "nix/store",
                "outputs": ["nix/store/out"],
                "constraints": {
                    "system": "x86_64-linux",
                    "provideBinSh": True,
                    "availableRoPaths": [str(gate)],
                },
            }
        )
    )
    source = tmp_path / "src"
    source.write_text("uploaded once, read by the retry\n")
    out = tmp_path / "out"
    with ExitStack() as stack:
        servers = _fleet(
            stack,
            tmp_path,
            2,
            "--store",
            f"objectstore+file://{shared}",
            "--allow-ro-path",
            str(gate),
        )
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "builder",
                "build",
                "--remote",
                _list_address(servers),
                str(request),
                "--import",
                f"src={source}",
                "--out",
                str(out),
                "--retry-time",
                "120",
                "--log-format",
                "json",
            ],
            env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "client")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            wait_for(lambda: processes_with(marker), "the build to start")
            [sleeper] = processes_with(marker)
            [victim] = [s for s in servers if _runs_under(sleeper, s)]
            (gate / "open").touch()
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            stdout, stderr = client.communicate(timeout=120)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            for leftover in processes_with(marker):
                leftover.kill()
    assert client.returncode == 0, stderr.decode()
    assert (out / "out").read_text() == "uploaded once, read by the retry\n"
    records = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    survivor = next(s for s in servers if s is not victim)
    victim_name = f"node-{servers.index(victim)}"
    survivor_name = f"node-{servers.index(survivor)}"
    cut_off = [r["builder"] for r in records if r.get("code") == "UNAVAILABLE"]
    # Should the survivor's connection still be coming up, a retry finds no builder
    # ("unknown") and the next one tries again.
    assert cut_off[0] == victim_name, stderr.decode()
    assert set(cut_off[1:]) <= {"unknown"}, stderr.decode()
    done = [r for r in records if r.get("message", "").startswith("build done")]
    assert [(r["builder"], r["retries"]) for r in done] == [(survivor_name, len(cut_off))]
    assert stdout


def test_tls_to_a_list_of_builders(
    pki: Pki,  # noqa: F811
    tmp_path: Path,
) -> None:
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    with ExitStack() as stack:
        servers = _fleet(stack, tmp_path, 2, *tls)
        # The certificate names localhost and 127.0.0.1; the list names no host itself.
        address = _list_address(servers).replace("grpc+http://", "grpc+https://")
        address += "?tls_name=localhost"
        hello = str(ROOT / "examples" / "hello.json")
        result = build(address, hello, "--tls-ca", str(pki.ca), data=tmp_path / "client")
        assert result.returncode == 0, result.stderr
        assert b"Hello, world!" in result.stderr

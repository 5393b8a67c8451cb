"""BuildDerivation and BuildPaths through the installed program, embedded executor.

Statuses and messages are Nix's; the three limits Nix sends hold; a client
that hangs up takes its build with it; two processes share one data directory.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path

import pytest

from builder.nix.nix_store import nix_environment
from builder.store import nixbase32
from tests.isolation import sleep_marker
from tests.nixserve.serve_client import (
    ServeClient,
    add_busybox,
    settings,
    shell_derivation,
    string,
    strings,
    u64,
)
from tests.processes import processes_with
from tests.requirements import require_nix, require_root
from tests.waiting import wait_for

BUILT, PERMANENT, INPUT_REJECTED, OUTPUT_REJECTED, TIMED_OUT, MISC, LOG_LIMIT = 0, 3, 4, 5, 8, 9, 11


@pytest.fixture
def client(tmp_path: Path) -> ServeClient:
    require_root("builds run in sandboxes")
    serve = ServeClient(str(tmp_path / "data"))
    serve.handshake()
    yield serve
    serve.kill()


def test_build_records_outputs(client: ServeClient) -> None:
    busybox = add_busybox(client)
    drv_path, out, drv = shell_derivation(busybox, f"echo building; echo {busybox} > $out")
    result = client.build_derivation(drv_path, drv, settings())
    assert (result.status, result.message) == (BUILT, "")
    assert (result.times_built, result.non_deterministic, result.built_outputs) == (1, 0, 0)
    assert 0 < result.start <= result.stop
    [info] = client.query_path_infos([out])
    assert info.deriver == drv_path
    assert info.references == [busybox]
    assert info.ca == ""
    code, stderr = client.finish()
    assert code == 0
    assert "building\n" in stderr


def test_fixed_output_is_recorded_with_its_content_address(client: ServeClient) -> None:
    busybox = add_busybox(client)
    digest = hashlib.sha256(b"fixed\n").digest()
    drv_path, out, drv = shell_derivation(
        busybox, "echo fixed > $out", "fixed", fixed=("sha256", digest.hex())
    )
    result = client.build_derivation(drv_path, drv, settings())
    assert (result.status, result.message) == (BUILT, "")
    [info] = client.query_path_infos([out])
    assert info.ca == f"fixed:sha256:{nixbase32.encode(digest)}"


def test_fixed_output_mismatch(client: ServeClient) -> None:
    busybox = add_busybox(client)
    digest = hashlib.sha256(b"expected\n").digest()
    drv_path, out, drv = shell_derivation(
        busybox, "echo other > $out", "fixed", fixed=("sha256", digest.hex())
    )
    result = client.build_derivation(drv_path, drv, settings())
    assert result.status == OUTPUT_REJECTED
    assert result.message.startswith(f"hash mismatch in fixed-output derivation '{drv_path}':")
    assert client.query_valid([out]) == []


def test_failure_names_the_exit_code_and_the_last_ten_lines(client: ServeClient) -> None:
    busybox = add_busybox(client)
    script = "for i in $(seq 1 15); do echo line $i; done; exit 3"
    drv_path, out, drv = shell_derivation(busybox, script)
    result = client.build_derivation(drv_path, drv, settings())
    assert result.status == PERMANENT
    lines = "\n".join(f"> line {i}" for i in range(6, 16))
    assert result.message == (
        f"builder for '{drv_path}' failed with exit code 3;\nlast 10 log lines:\n{lines}"
    )
    assert client.query_valid([out]) == []


def test_build_timeout(client: ServeClient) -> None:
    busybox = add_busybox(client)
    drv_path, _, drv = shell_derivation(busybox, "sleep 600")
    result = client.build_derivation(drv_path, drv, settings(timeout=1))
    assert result.status == TIMED_OUT
    assert result.message == f"building of '{drv_path}' timed out after 1 seconds"


def test_silence_limit(client: ServeClient) -> None:
    """Output keeps a build alive past the silence limit; the silence afterwards ends it."""
    busybox = add_busybox(client)
    script = "for i in 1 2 3; do echo tick; sleep 0.5; done; sleep 600"
    drv_path, _, drv = shell_derivation(busybox, script)
    result = client.build_derivation(drv_path, drv, settings(max_silent=1))
    assert result.status == TIMED_OUT
    assert result.message == f"building of '{drv_path}' timed out after 1 seconds of silence"
    assert result.stop - result.start >= 1


def test_log_limit(client: ServeClient) -> None:
    busybox = add_busybox(client)
    drv_path, _, drv = shell_derivation(busybox, "while true; do echo 0123456789; done")
    result = client.build_derivation(drv_path, drv, settings(max_log=1000))
    assert result.status == LOG_LIMIT
    assert result.message == (
        f"building of '{drv_path}' killed after writing more than 1000 bytes of log output"
    )


def test_missing_input_is_rejected(client: ServeClient) -> None:
    busybox = add_busybox(client)
    drv_path, _, drv = shell_derivation(busybox, "true")
    drv.input_sources.append("/nix/store/" + "0" * 32 + "-absent")
    result = client.build_derivation(drv_path, drv, settings())
    assert result.status == INPUT_REJECTED
    assert "0" * 32 + "-absent' is not valid" in result.message


def test_invalid_derivation_is_refused_in_the_protocol(client: ServeClient) -> None:
    busybox = add_busybox(client)
    drv_path, _, drv = shell_derivation(busybox, "true")
    drv.outputs[0] = ("out", "", "", "")
    result = client.build_derivation(drv_path, drv, settings())
    assert result.status == MISC
    assert "no output path" in result.message
    # The connection goes on.
    assert client.query_valid([busybox]) == [busybox]
    assert client.finish() == (0, "")


def test_hangup_cancels_the_build(client: ServeClient) -> None:
    busybox = add_busybox(client)
    marker = sleep_marker(4321)
    drv_path, _, drv = shell_derivation(busybox, marker)
    client.send(u64(8) + string(drv_path) + drv.encode() + settings())
    wait_for(lambda: processes_with(marker), "the build to start")
    code, stderr = client.finish(timeout=30)
    assert code == 1
    assert "the client closed the connection" in stderr
    wait_for(lambda: not processes_with(marker), "the build to end with its client", timeout=10)


def test_two_processes_build_on_one_data_directory(tmp_path: Path) -> None:
    require_root("builds run in sandboxes")
    store = str(tmp_path / "data")
    setup = ServeClient(store)
    setup.handshake()
    busybox = add_busybox(setup)
    assert setup.finish() == (0, "")
    barrier = threading.Barrier(2)
    results: dict[int, object] = {}

    def build(index: int) -> None:
        serve = ServeClient(store)
        try:
            serve.handshake()
            drv_path, out, drv = shell_derivation(
                busybox, f"sleep 1; echo {index} > $out", f"par{index}"
            )
            barrier.wait()
            result = serve.build_derivation(drv_path, drv, settings())
            results[index] = (result.status, result.message, serve.query_valid([out]) == [out])
            results[index + 10] = serve.finish()
        finally:
            serve.kill()

    threads = [threading.Thread(target=build, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {1: (BUILT, "", True), 2: (BUILT, "", True), 11: (0, ""), 12: (0, "")}
    # Each process's work directory went with it.
    assert list((tmp_path / "data" / "nix-serve").iterdir()) == []


def test_build_paths_builds_stored_derivations_inputs_first(tmp_path: Path) -> None:
    """``nix-store --export`` of a derivation closure, imported, then built by BuildPaths."""
    require_root("builds run in sandboxes")
    require_nix()
    from tests.nix.corpus import busybox_dir, instantiate

    busybox = busybox_dir(tmp_path)
    drv = instantiate(["chain"], busybox)["chain"]
    env = nix_environment()
    closure = subprocess.run(
        ["nix-store", "--query", "--requisites", drv],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.split()  # fmt: skip
    export = subprocess.run(
        ["nix-store", "--export", *closure], capture_output=True, env=env, check=True
    ).stdout
    out = subprocess.run(
        ["nix-store", "--query", "--outputs", drv],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    serve = ServeClient(str(tmp_path / "data"))
    try:
        serve.handshake()
        serve.send(u64(4) + export)
        assert serve.u64() == 1
        assert serve.query_valid([out]) == []
        serve.send(u64(6) + strings([drv + "!out"]) + settings())
        assert serve.u64() == 0
        assert serve.query_valid([out]) == [out]
        [info] = serve.query_path_infos([out])
        assert info.deriver == drv
        # QueryClosure with outputs reaches the built output from the derivation.
        serve.send(u64(7) + u64(1) + strings([drv]))
        assert out in serve.strings()
        code, stderr = serve.finish()
        assert code == 0, stderr
    finally:
        serve.kill()

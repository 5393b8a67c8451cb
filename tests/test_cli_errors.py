"""User mistakes end the ``builder`` command with one line on stderr and the documented status.

Each case runs the real command as a subprocess, as a user would, and checks
the exit status (2 invalid use, 1 any other error), that stderr is exactly one
``builder: error:`` line naming the culprit, and that no traceback escaped.
Mistakes about ``--out`` must be found before any build starts.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import require_root

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HELLO = str(EXAMPLES / "hello.json")


def builder(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The single error line of a failed command, after checking its status and contents."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("builder: error: "), line
    for part in parts:
        assert part in line, line
    return line


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _digest_of(path: Path, data: Path) -> str:
    imported = builder("castore", "import", str(path), data=data)
    assert imported.returncode == 0, imported.stderr
    return imported.stdout.split("\t")[1].split()[1]


def test_missing_request_file(data: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.json")
    one_line_error(builder("run", missing, data=data), 2, missing, "No such file")


def test_request_file_that_is_a_directory(data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "req.json"
    folder.mkdir()
    one_line_error(builder("run", str(folder), data=data), 2, str(folder), "Is a directory")


@pytest.mark.parametrize(
    ("body", "expected"),
    [("{not json", "req.json"), (b"\xff\xfe{}", "not UTF-8")],
)
def test_request_file_that_is_not_a_request(
    data: Path, tmp_path: Path, body: str | bytes, expected: str
) -> None:
    request = tmp_path / "req.json"
    if isinstance(body, bytes):
        request.write_bytes(body)
    else:
        request.write_text(body)
    one_line_error(builder("run", str(request), data=data), 2, expected)


def test_import_of_a_missing_path(data: Path) -> None:
    result = builder("run", HELLO, "--import", "x=/does/not/exist", data=data)
    one_line_error(result, 2, "--import x=/does/not/exist", "No such file")


def test_import_without_a_name(data: Path) -> None:
    one_line_error(builder("run", HELLO, "--import", "/tmp", data=data), 2, "NAME=PATH")


def test_castore_import_of_a_missing_path(data: Path) -> None:
    one_line_error(builder("castore", "import", "/nope", data=data), 2, "/nope", "No such file")


def test_nar_of_neither_a_path_nor_a_digest(data: Path) -> None:
    result = builder("castore", "nar", "/nope", data=data)
    one_line_error(result, 2, "/nope", "no such path", "malformed digest")


@pytest.mark.parametrize("command", ["cat", "materialise"])
def test_malformed_and_unknown_digests(data: Path, tmp_path: Path, command: str) -> None:
    dest = [str(tmp_path / "dest")] if command == "materialise" else []
    malformed = builder("castore", command, "blake3-AAAA", *dest, data=data)
    one_line_error(malformed, 2, "malformed digest 'blake3-AAAA'")
    unknown = builder("castore", command, "ab" * 32, *dest, data=data)
    one_line_error(unknown, 1, "not found" if command == "cat" else "neither a stored directory")
    assert not (tmp_path / "dest").exists()


def test_cat_of_a_directory(data: Path) -> None:
    digest = _digest_of(EXAMPLES / "hello-tree", data)
    one_line_error(builder("castore", "cat", digest, data=data), 2, digest, "is a directory")


def test_materialise_onto_something_that_exists_or_cannot_be_made(
    data: Path, tmp_path: Path
) -> None:
    digest = _digest_of(EXAMPLES / "hello.json", data)
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    one_line_error(
        builder("castore", "materialise", digest, str(taken), data=data), 1, "already exists"
    )
    assert taken.read_text() == "mine\n"
    below_a_file = str(taken / "x")
    one_line_error(
        builder("castore", "materialise", digest, below_a_file, data=data),
        2,
        f"DEST {below_a_file}",
    )


def test_missing_store_configuration(data: Path, tmp_path: Path) -> None:
    config = str(tmp_path / "nope.toml")
    result = builder("castore", "import", "--store", config, str(EXAMPLES), data=data)
    one_line_error(result, 2, f"--store {config}", "No such file")


def test_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = str(blocker / "data")
    result = builder("castore", "import", "--data-dir", bad, str(EXAMPLES), data=tmp_path)
    one_line_error(result, 2, f"--data-dir {bad}")


def _refused_before_the_build(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    line = one_line_error(result, 2, "--out", *parts)
    assert "started" not in result.stderr and "result cache" not in result.stderr, line


def test_out_below_a_file(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = builder("run", HELLO, "--out", str(blocker / "out"), data=data)
    _refused_before_the_build(result, "Not a directory")


def test_out_that_is_a_file(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    _refused_before_the_build(builder("run", HELLO, "--out", str(blocker), data=data), str(blocker))


def test_out_that_anyone_may_write_to(data: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = builder("run", HELLO, "--out", str(shared), data=data)
    _refused_before_the_build(result, "anyone may write")


def test_out_that_belongs_to_someone_else(data: Path, tmp_path: Path) -> None:
    require_root("giving a directory to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    result = builder("run", HELLO, "--out", str(theirs), data=data)
    _refused_before_the_build(result, "belongs to uid 65534")


def test_out_through_a_symlink(data: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    result = builder("run", HELLO, "--out", str(tmp_path / "link"), data=data)
    _refused_before_the_build(result, "symlink")


def test_out_of_a_remote_build_is_checked_before_connecting(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    remote = f"grpc+unix://{tmp_path}/none.sock"
    result = builder("build", "--remote", remote, HELLO, "--out", str(blocker / "o"), data=data)
    _refused_before_the_build(result, "Not a directory")


def test_remote_that_nobody_serves(data: Path, tmp_path: Path) -> None:
    result = builder("build", "--remote", f"grpc+unix://{tmp_path}/none.sock", HELLO, data=data)
    one_line_error(result, 1, "UNAVAILABLE")


def test_missing_token_file(data: Path, tmp_path: Path) -> None:
    token = str(tmp_path / "token")
    remote = f"grpc+unix://{tmp_path}/none.sock"
    result = builder("build", "--remote", remote, HELLO, "--token-file", token, data=data)
    one_line_error(result, 2, f"--token-file {token}", "No such file")
    served = builder(
        "serve", "--listen", f"grpc+unix://{tmp_path}/s.sock", "--token-file", token, data=data
    )
    one_line_error(served, 2, f"--token-file {token}", "No such file")


def test_invalid_request_is_invalid_use(data: Path, tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"commandArgs": ["true"], "workingDir": "/abs"}))
    one_line_error(builder("run", str(request), data=data), 2, "working_dir")


def test_argparse_usage_errors_exit_2(data: Path) -> None:
    result = builder("run", data=data)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "the following arguments are required: request" in result.stderr


def test_version_comes_from_the_package(data: Path) -> None:
    result = builder("--version", data=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"builder {importlib.metadata.version('sandboxed-builder')}\n"


def test_help_lists_the_exit_codes(data: Path) -> None:
    result = builder("--help", data=data)
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    for code in ("100", "130", "  2 ", "  1 "):
        assert code in result.stdout


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--jobs", "0", "--jobs must be at least 1, got 0"),
        ("--timeout", "0", "--timeout must be more than 0 seconds"),
        ("--memory-limit", "0", "--memory-limit must be at least 1"),
    ],
)
def test_numbers_that_allow_no_build(data: Path, option: str, value: str, expected: str) -> None:
    one_line_error(builder("run", HELLO, option, value, data=data), 2, expected)


def test_work_dir_that_cannot_be_created(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = str(blocker / "work")
    one_line_error(builder("run", HELLO, "--work-dir", bad, data=data), 2, f"--work-dir {bad}")


def test_missing_tls_files_of_a_server(data: Path, tmp_path: Path) -> None:
    cert = str(tmp_path / "cert.pem")
    result = builder(
        "serve",
        "--listen",
        "grpc+http://127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        str(tmp_path / "key.pem"),
        data=data,
    )
    one_line_error(result, 2, f"--tls-cert {cert}", "No such file")


def test_ctrl_c_outside_a_build_exits_130(data: Path, tmp_path: Path) -> None:
    """``castore cat`` of a blob larger than a pipe holds blocks writing until interrupted."""
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(4 << 20))
    digest = _digest_of(blob, data)
    cat = subprocess.Popen(
        [sys.executable, "-m", "builder", "castore", "cat", digest],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert cat.stdout is not None
        assert cat.stdout.read(1), "cat wrote nothing"
        cat.send_signal(signal.SIGINT)
        _, stderr = cat.communicate(timeout=60)
    finally:
        cat.kill()
    assert cat.returncode == 130, stderr
    assert stderr == b"builder: error: interrupted by SIGINT\n"


@pytest.mark.parametrize("flag", ["--shutdown-grace", "--gc-interval", "--gc-min-age"])
@pytest.mark.parametrize("seconds", ["inf", "1e300", "nan"])
def test_serve_refuses_seconds_no_timer_can_wait(
    data: Path, tmp_path: Path, flag: str, seconds: str
) -> None:
    """Such a value once started the server and crashed its timers when they were first used."""
    listen = f"grpc+unix://{tmp_path / 'serve.sock'}"
    result = subprocess.run(
        [sys.executable, "-m", "builder", "serve", "--listen", listen, flag, seconds],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"builder serve: error: argument {flag}: {seconds!r}"), last


@pytest.mark.parametrize("flag", ["--timeout", "--log-retention"])
@pytest.mark.parametrize("seconds", ["inf", "nan", "-1"])
def test_run_refuses_seconds_no_timer_can_wait(data: Path, flag: str, seconds: str) -> None:
    result = builder("run", HELLO, f"{flag}={seconds}", data=data)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"builder run: error: argument {flag}: {seconds!r}"), last

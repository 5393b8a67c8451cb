"""The ``builder castore`` commands, run as a user would run them."""

from __future__ import annotations

import filecmp
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.fs.import_record import RACY_WINDOW_NS
from builder.castore.wire import Family
from builder.store.pathinfos.grpc import GrpcPathInfoService
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from tests.requirements import require_nix
from tests.store.infos import symlink_info
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hello-tree"


def builder(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        env=env,
        capture_output=True,
        check=check,
        timeout=120,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")}


def _tree_digest(out: bytes) -> str:
    line = out.decode().splitlines()[0]
    kind, digest = line.split("\t")[1].split()[:2]
    assert kind == "directory"
    return digest


def _same_tree(a: Path, b: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        for name in dirnames + filenames:
            x, y = Path(dirpath) / name, b / rel / name
            assert x.is_symlink() == y.is_symlink()
            if x.is_symlink():
                assert os.readlink(x) == os.readlink(y)
            elif x.is_file():
                assert filecmp.cmp(x, y, shallow=False)
                x_exec, y_exec = (bool(p.stat().st_mode & stat.S_IXUSR) for p in (x, y))
                assert x_exec == y_exec


def test_import_materialise_cat_on_embedded_store(env: dict[str, str], tmp_path: Path) -> None:
    out = builder("castore", "import", str(EXAMPLE), env=env).stdout
    digest = _tree_digest(out)
    assert (tmp_path / "data" / "directories.sqlite").is_file()
    dest = tmp_path / "restored"
    builder("castore", "materialise", digest, str(dest), env=env)
    _same_tree(EXAMPLE, dest)
    _same_tree(dest, EXAMPLE)

    file_line = builder("castore", "import", str(EXAMPLE / "bin" / "hello"), env=env).stdout
    blob = file_line.decode().split("\t")[1].split()[1]
    cat = builder("castore", "cat", blob, env=env).stdout
    assert cat == (EXAMPLE / "bin" / "hello").read_bytes()


def test_import_records_files_in_the_data_dir_and_sees_a_change(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Files old enough to trust are recorded; a rewrite that keeps size and mtime still shows."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept").write_text("kept\n")
    (src / "changed").write_text("before\n")
    newest = max(os.lstat(path).st_ctime_ns for path in src.iterdir())
    wait_for(lambda: time.time_ns() - newest > RACY_WINDOW_NS, "the files to age")
    first = _tree_digest(builder("castore", "import", str(src), env=env).stdout)
    with sqlite3.connect(tmp_path / "data" / "imports.sqlite") as record:
        assert record.execute("SELECT count(*) FROM imported_files").fetchone() == (2,)

    old = os.stat(src / "changed")
    (src / "changed").write_text("after!\n")
    os.utime(src / "changed", ns=(old.st_atime_ns, old.st_mtime_ns))
    second = _tree_digest(builder("castore", "import", str(src), env=env).stdout)
    fresh = builder("castore", "import", "--data-dir", str(tmp_path / "fresh"), str(src), env=env)
    assert second != first
    assert second == _tree_digest(fresh.stdout)


def test_data_dir_flag_overrides_environment(env: dict[str, str], tmp_path: Path) -> None:
    builder("castore", "import", "--data-dir", str(tmp_path / "other"), str(EXAMPLE), env=env)
    assert (tmp_path / "other" / "directories.sqlite").is_file()
    assert not (tmp_path / "data").exists()


def test_nar_matches_nix_store_dump(env: dict[str, str]) -> None:
    require_nix()
    ours = builder("castore", "nar", str(EXAMPLE), env=env).stdout
    theirs = subprocess.run(["nix-store", "--dump", str(EXAMPLE)], capture_output=True, check=True)
    assert ours == theirs.stdout
    hashed = builder("castore", "nar", "--hash", str(EXAMPLE), env=env).stdout.decode().split()
    expected = subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(EXAMPLE)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    assert hashed == [f"sha256:{expected}", str(len(theirs.stdout))]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["cat", "blake3-AAAA"], "digest must be 32 bytes", 2),
        (["cat", "0" * 64], "not found", 1),
        (["materialise", "1" * 64, "/nonexistent/x"], "neither a stored directory nor", 1),
        (["import", "--store", "tape://x", "."], "'tape://x' is not a blob service URL", 2),
    ],
)
def test_errors_are_reported_clearly(
    env: dict[str, str], args: list[str], message: str, code: int
) -> None:
    result = builder("castore", *args, env=env, check=False)
    assert result.returncode == code, result.stderr
    assert message in result.stderr.decode()


def test_import_rejects_fifo(env: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = builder("castore", "import", str(fifo), env=env, check=False)
    assert result.returncode == 2
    assert "pipe" in result.stderr.decode()


@pytest.fixture
def served(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    socket = tmp_path / "castore.sock"
    url = f"grpc+unix://{socket}"
    server = subprocess.Popen(
        [sys.executable, "-m", "builder", "castore", "serve", "--listen", url],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:

        def listening() -> bool:
            assert server.poll() is None, server.stderr.read() if server.stderr else b""
            return socket.exists()

        wait_for(listening, "the server to listen")
        yield url
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0


def test_serve_then_use_as_remote_store(served: str, env: dict[str, str], tmp_path: Path) -> None:
    remote_env = {**env, "BUILDER_DATA_DIR": str(tmp_path / "client-data")}
    digest = _tree_digest(
        builder("castore", "import", "--store", served, str(EXAMPLE), env=remote_env).stdout
    )
    assert not (tmp_path / "client-data").exists()
    dest = tmp_path / "from-server"
    builder("castore", "materialise", "--store", served, digest, str(dest), env=remote_env)
    _same_tree(EXAMPLE, dest)
    assert (tmp_path / "data" / "directories.sqlite").is_file()


def test_castore_serve_serves_pathinfos_into_its_store(
    served: str, env: dict[str, str], tmp_path: Path
) -> None:
    info = symlink_info("served")
    for family in Family:
        client = GrpcPathInfoService(served, family)
        try:
            assert client.put(info) == info
            assert client.get(info.path.digest) == info
        finally:
            client.close()
    kept = SqlitePathInfoService(tmp_path / "data" / "pathinfo.sqlite")
    try:
        assert kept.get(info.path.digest) == info
    finally:
        kept.close()

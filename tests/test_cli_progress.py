"""Progress of ``castore import`` and ``build --remote``: a bar on a terminal, a summary line else.

The command runs as a user would run it, with its standard error on a real
pseudo-terminal or on a pipe; tqdm decides nothing of this itself, so what is
checked is what a user sees in each case.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tqdm import tqdm

from tests.test_cli_build_remote import Server, _request_file, serving

ROOT = Path(__file__).resolve().parents[1]
FILES = 12
FILE_SIZE = 2_000


def _tree(where: Path, tag: str = "") -> Path:
    """``FILES`` files of ``FILE_SIZE`` distinct bytes each, two levels deep."""
    for i in range(FILES):
        path = where / f"d{i % 3}" / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{tag}{i:08}".encode().ljust(FILE_SIZE, b"."))
    return where


def _on_terminal(args: list[str], data: Path, columns: int = 120) -> tuple[str, bytes, int]:
    """Run ``builder ARGS`` with standard error on a pseudo-terminal ``columns`` wide.

    Returns what the terminal showed, standard output and the exit status.
    """
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    shown = bytearray()

    def read_all() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=read_all)
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "builder", *args],
            env={**os.environ, "BUILDER_DATA_DIR": str(data)},
            stdout=subprocess.PIPE,
            stderr=terminal,
            cwd=ROOT,
        ) as process:
            os.close(terminal)
            terminal = -1
            reader.start()
            stdout, _ = process.communicate(timeout=120)
        reader.join(timeout=60)
        assert not reader.is_alive(), "the terminal stayed open after the command ended"
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    return shown.decode(), stdout, process.returncode


def _last_bar(shown: str, label: str) -> str:
    """The bar's final rendering: tqdm redraws it in place after carriage returns."""
    renderings = [part for part in re.split(r"[\r\n]+", shown) if part.startswith(label)]
    assert renderings, f"no {label!r} bar in {shown!r}"
    return renderings[-1]


def _build(remote: str, *args: str, data: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "build", "--remote", remote, *args],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )


def test_import_on_a_terminal_shows_a_bar_of_files_and_bytes(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    shown, stdout, status = _on_terminal(["castore", "import", str(tree)], data=tmp_path / "data")
    assert status == 0, shown
    assert stdout.decode().startswith(f"{tree}\tdirectory ")
    final = _last_bar(shown, "importing")
    assert f"{FILES} files" in final
    assert tqdm.format_sizeof(FILES * FILE_SIZE) + "B" in final


def test_a_terminal_without_a_width_gets_the_summary_line(tmp_path: Path) -> None:
    """tqdm draws nothing in zero columns, which is what an unsized pseudo-terminal reports."""
    tree = _tree(tmp_path / "tree")
    shown, _, status = _on_terminal(
        ["castore", "import", str(tree)], data=tmp_path / "data", columns=0
    )
    assert status == 0, shown
    assert re.search(rf"^imported {FILES} files, ", shown, re.MULTILINE), shown
    assert "importing" not in shown


def test_import_to_a_pipe_prints_one_summary_line(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    single = tmp_path / "single"
    single.write_bytes(b"x" * 5000)
    result = subprocess.run(
        [sys.executable, "-m", "builder", "castore", "import", str(tree), str(single)],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    summaries = [line for line in lines if line.startswith("imported ")]
    size = FILES * FILE_SIZE + 5000
    assert len(summaries) == 1, lines
    assert re.fullmatch(
        rf"imported {FILES + 1} files, {size / 1024:.1f} KiB in \d+\.\d s \(.+/s\)", summaries[0]
    ), summaries[0]
    assert "\r" not in result.stderr.decode(), "a bar was drawn on a pipe"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    with serving(tmp, f"grpc+unix://{tmp}/builder.sock") as started:
        yield started


COPY_SCRIPT = "cp -r /nix/store/src /nix/store/out"


def test_upload_on_a_terminal_shows_a_bar_with_the_total(server: Server, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", "terminal")
    request = _request_file(tmp_path, COPY_SCRIPT)
    shown, stdout, status = _on_terminal(
        ["build", "--remote", server.address, str(request), "--import", f"src={src}"],
        data=tmp_path / "data",
    )
    assert status == 0, shown
    assert stdout.startswith(b"nix/store/out\tdirectory blake3-")
    final = _last_bar(shown, "uploading")
    total = tqdm.format_sizeof(FILES * FILE_SIZE)
    assert f"{total}/{total}" in final
    assert "100%" in final
    assert f"{FILES}/{FILES} blobs, 0 already on the server" in final


def test_upload_and_fetch_to_a_pipe_print_summary_lines(server: Server, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", "pipe")
    request = _request_file(tmp_path, COPY_SCRIPT)
    first = _build(
        server.address,
        str(request),
        "--import",
        f"src={src}",
        "--out",
        str(tmp_path / "o1"),
        data=tmp_path / "data",
    )
    assert first.returncode == 0, first.stderr
    stderr = first.stderr.decode()
    size = f"{FILES * FILE_SIZE / 1024:.1f} KiB"
    assert re.search(
        rf"^uploaded {FILES} blobs, {size} in \d+\.\d s \(.+/s\); 0 already on the server$",
        stderr,
        re.MULTILINE,
    ), stderr
    # The output is a copy of the input: the server has every blob, the local store too.
    assert re.search(
        r"^fetched 0 blobs, 0 bytes in \d+\.\d s; " rf"{FILES} already stored here$",
        stderr,
        re.MULTILINE,
    ), stderr

    again = _request_file(
        tmp_path,
        f"{COPY_SCRIPT} && chmod u+w /nix/store/out && echo again > /nix/store/out/new",
        "b.json",
    )
    second = _build(
        server.address,
        str(again),
        "--import",
        f"src={src}",
        "--out",
        str(tmp_path / "o2"),
        data=tmp_path / "fresh",
    )
    assert second.returncode == 0, second.stderr
    stderr = second.stderr.decode()
    assert re.search(
        rf"^uploaded 0 blobs, 0 bytes in \d+\.\d s; {FILES} already on the server$",
        stderr,
        re.MULTILINE,
    ), stderr
    assert re.search(
        rf"^fetched 1 blob, 6 bytes in \d+\.\d s \(.+/s\); {FILES} already stored here$",
        stderr,
        re.MULTILINE,
    ), stderr

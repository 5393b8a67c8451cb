"""The entry points end their process without the interpreter's teardown, losing nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **options: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, **options)  # type: ignore[call-overload]


def test_buffered_output_and_log_lines_arrive_and_the_status_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = (
        "import logging, sys\n"
        "from builder.process_end import end_process\n"
        f"handler = logging.FileHandler({str(log)!r})\n"
        "logging.getLogger().addHandler(handler)\n"
        "logging.getLogger().warning('the last line')\n"
        "sys.stdout.write('x' * 1_000_000)\n"
        "sys.stderr.write('to stderr')\n"
        "end_process(3)\n"
    )
    process = _python(code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3
    assert out == b"x" * 1_000_000
    assert err == b"to stderr"
    assert log.read_text() == "the last line\n"


def test_output_nobody_reads_turns_success_into_failure() -> None:
    code = (
        "import sys\n"
        "from builder.process_end import end_process\n"
        "sys.stdin.readline()\n"
        "sys.stdout.write('lost')\n"
        "end_process(0)\n"
    )
    process = _python(code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdout.close()
    process.stdin.write(b"go\n")
    process.stdin.close()
    assert process.wait(timeout=60) == 1


def test_the_command_ends_through_it_with_its_own_status(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "builder", "castore", "import", str(tmp_path / "absent")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"BUILDER_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    assert "absent" in done.stderr

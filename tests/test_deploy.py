"""The deployment files in deploy/: their ``builder`` command lines are ones our parser accepts.

A unit or image whose command line names a flag that was renamed or removed
would only fail once deployed; here it fails the suite. The settings the
sandbox depends on (deploy/README.md says why) are checked as well.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from builder.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "builder.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
SETUP = ROOT / "scripts" / "setup.sh"


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comments dropped, as both formats read."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith(("#", ";"))):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "a continuation runs past the end of the file"
    return lines


def _unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a systemd unit, each key with every value it was given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in _logical_lines(text):
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"not a key in a section: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _instructions(text: str) -> list[tuple[str, str]]:
    """A Containerfile's instructions and their arguments."""
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.partition(" ") for line in _logical_lines(text))
    ]


def _parses(argv: list[str]) -> object:
    """The namespace our parser makes of ``argv``; a usage error fails the test with it."""
    assert Path(argv[0]).name == "builder", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exit:
        pytest.fail(f"builder rejects {shlex.join(argv)} (exit {exit.code})")


def _flag(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]


def test_the_unit_starts_a_valid_serve_command() -> None:
    service = _unit(UNIT.read_text())["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    args = _parses(argv)
    assert getattr(args, "command", None) == "serve"
    (state,) = service["StateDirectory"]
    assert _flag(argv, "--data-dir") == [f"/var/lib/{state}"]
    (runtime,) = service["RuntimeDirectory"]
    for listen in _flag(argv, "--listen"):
        if listen.startswith("grpc+unix://"):
            assert Path(listen.removeprefix("grpc+unix://")).parent == Path("/run") / runtime


def test_the_unit_lets_the_server_shut_down_and_the_launcher_make_cgroups() -> None:
    service = _unit(UNIT.read_text())["Service"]
    assert service["KillMode"] == ["mixed"], "SIGTERM must reach the server alone"
    assert service["Delegate"] == ["yes"], "the launcher makes a cgroup per build"
    (timeout,) = service["TimeoutStopSec"]
    assert re.fullmatch(r"\d+s", timeout), timeout
    assert int(timeout[:-1]) >= 60
    for option in ("PrivateUsers", "RestrictNamespaces", "SystemCallFilter", "ProtectHostname"):
        assert option not in service, f"{option} would break the sandbox (deploy/README.md)"


def test_the_unit_reader_joins_continuations_and_keeps_repeated_keys() -> None:
    sections = _unit("# c\n[Service]\nExecStart=/x/builder serve \\\n    --listen a\nA=1\nA=2\n")
    assert sections == {"Service": {"ExecStart": ["/x/builder serve --listen a"], "A": ["1", "2"]}}


def test_the_image_runs_a_valid_serve_command() -> None:
    instructions = _instructions(CONTAINERFILE.read_text())
    (entrypoint,) = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    argv = [*entrypoint, *cmd]
    args = _parses(argv)
    assert getattr(args, "command", None) == "serve"
    volumes = [rest for keyword, rest in instructions if keyword == "VOLUME"]
    assert _flag(argv, "--data-dir") == volumes


def test_the_image_installs_what_setup_installs() -> None:
    declared = re.search(r"^packages=\(([^)]*)\)", SETUP.read_text(), re.MULTILINE)
    assert declared is not None, "scripts/setup.sh no longer lists its packages as packages=(...)"
    installs = " ".join(
        rest for keyword, rest in _instructions(CONTAINERFILE.read_text()) if keyword == "RUN"
    )
    apt = re.search(r"apt-get install (.*?)(&&|$)", installs)
    assert apt is not None
    missing = set(declared.group(1).split()) - set(apt.group(1).split())
    assert not missing, f"the image lacks {sorted(missing)}"

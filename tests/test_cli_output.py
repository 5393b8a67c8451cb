"""What ``builder`` prints: readable results, every digest form read back, help on every option."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.digest import Digest
from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from builder.cli import build_parser
from builder.cli_output import (
    EXIT_BUILD_FAILED,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    describe_node,
    exit_code_of,
    format_bytes,
    report_unexpected,
)
from builder.errors import (
    BuilderError,
    BuildFailedError,
    CancelledError,
    CommandFailedError,
    InvalidArgumentError,
    NotFoundError,
    SignalledError,
    UnavailableError,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DIGEST = Digest.of(b"Hello World!")
BLAKE3 = r"blake3-[A-Za-z0-9+/]{43}="


def builder(*args: str, data: Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [sys.executable, "-m", "builder", *args],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (12_595, "12.3 KiB"),
        (5 << 20, "5.0 MiB"),
        (3 << 30, "3.0 GiB"),
        (1 << 70, "1024.0 EiB"),
    ],
)
def test_sizes_in_bytes_get_binary_units(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_nodes_say_what_their_size_counts() -> None:
    assert describe_node(DirectoryNode(b"d", DIGEST, 1)) == f"directory {DIGEST} 1 entry"
    assert describe_node(DirectoryNode(b"d", DIGEST, 7)) == f"directory {DIGEST} 7 entries"
    assert describe_node(FileNode(b"f", DIGEST, 2048, True)) == f"file {DIGEST} 2.0 KiB executable"
    assert describe_node(FileNode(b"f", DIGEST, 12)) == f"file {DIGEST} 12 bytes"
    assert describe_node(SymlinkNode(b"l", b"target")) == "symlink -> target"
    assert describe_node(SymlinkNode(b"l", b"\xfftarget")) == r"symlink -> \xfftarget"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CommandFailedError("exited with code 3", 3), EXIT_BUILD_FAILED),
        (BuildFailedError("output 'out' was not produced"), EXIT_BUILD_FAILED),
        (InvalidArgumentError("working_dir: not relative"), EXIT_USAGE),
        (SignalledError("interrupted by SIGINT", 2), EXIT_INTERRUPTED),
        (SignalledError("interrupted by SIGTERM", 15), 143),
        (CancelledError("cancelled by the server"), EXIT_FAILURE),
        (NotFoundError("blob not found"), EXIT_FAILURE),
        (UnavailableError("server unreachable"), EXIT_FAILURE),
        (BuilderError("UNAUTHENTICATED"), EXIT_FAILURE),
    ],
)
def test_exit_codes(error: BuilderError, code: int) -> None:
    assert exit_code_of(error) == code


def _raised(error: Exception) -> Exception:
    """The error with the traceback it gets when raised, as the command sees it."""
    try:
        raise error
    except Exception as caught:
        return caught


def test_a_bug_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_DEBUG", raising=False)
    quiet = io.StringIO()
    assert report_unexpected(_raised(KeyError("detail")), quiet) == EXIT_FAILURE
    assert quiet.getvalue() == (
        "builder: error: KeyError: 'detail' (this is a bug; set BUILDER_DEBUG=1 "
        "for the traceback)\n"
    )

    monkeypatch.setenv("BUILDER_DEBUG", "1")
    loud = io.StringIO()
    assert report_unexpected(_raised(KeyError("detail")), loud) == EXIT_FAILURE
    first, *rest = loud.getvalue().splitlines()
    assert first == "builder: error: KeyError: 'detail' (this is a bug)"
    assert rest[0] == "Traceback (most recent call last):"
    assert "_raised" in loud.getvalue()


def test_a_bug_without_a_message_is_named_by_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_DEBUG", raising=False)
    out = io.StringIO()
    report_unexpected(_raised(AssertionError()), out)
    assert out.getvalue().startswith("builder: error: AssertionError (this is a bug;")


def test_a_host_error_that_escaped_is_not_called_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_DEBUG", raising=False)
    out = io.StringIO()
    error = _raised(PermissionError(13, "Permission denied", "/srv/x"))
    assert report_unexpected(error, out) == EXIT_FAILURE
    assert out.getvalue() == "builder: error: [Errno 13] Permission denied: '/srv/x'\n"


def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_has_help_with_its_unit_and_default() -> None:
    """Numbers say their unit (bytes, seconds, entries) or are counts (N); defaults are shown."""
    problems = []
    for path, action in _actions(build_parser(), "builder"):
        name = "/".join(action.option_strings) or action.dest
        text = action.help
        if not text or text == argparse.SUPPRESS:
            problems.append(f"{path} {name}: no help")
            continue
        takes_value = action.nargs != 0
        if action.type in (int, float) and not (
            action.metavar == "N" or re.search(r"\b(bytes|seconds|entries)\b", text)
        ):
            problems.append(f"{path} {name}: no unit in {text!r}")
        if action.option_strings and takes_value and not action.required and "default" not in text:
            problems.append(f"{path} {name}: no default in {text!r}")
    assert not problems, "\n".join(problems)


def test_option_defaults_are_rendered_in_help() -> None:
    run = next(
        sub
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
        if name == "run"
    )
    text = run.format_help()
    assert "(default: 14400.0)" in text
    assert f"(default: {20 << 30})" in text


SHAPES = (
    "mkdir /nix/store/a-dir && echo hi > /nix/store/a-dir/f && "
    "head -c 2048 /dev/zero > /nix/store/b-file && chmod +x /nix/store/b-file && "
    "ln -s b-file /nix/store/c-link && echo marker-b-file >> /nix/store/a-dir/f"
)
OUTPUTS = ["nix/store/a-dir", "nix/store/b-file", "nix/store/c-link"]


@pytest.fixture
def shapes_request(tmp_path: Path) -> Path:
    path = tmp_path / "shapes.json"
    path.write_text(
        json.dumps(
            {
                "commandArgs": ["/bin/sh", "-c", SHAPES],
                "workingDir": "build",
                "scratchPaths": ["build", "nix/store"],
                "inputsDir": "nix/store",
                "outputs": OUTPUTS,
                "environmentVars": [{"key": "PATH", "value": base64.b64encode(b"/bin").decode()}],
                "constraints": {"system": "x86_64-linux", "provideBinSh": True},
                "refscanNeedles": ["marker-b-file"],
            }
        )
    )
    return path


def check_readable_outputs(readable: str, as_json: str) -> None:
    """One line per output, request path first; digests agree with the protobuf JSON."""
    lines = readable.splitlines()
    assert len(lines) == 3, readable
    assert re.fullmatch(rf"nix/store/a-dir\tdirectory ({BLAKE3}) 2 entries\tneedles 0", lines[0])
    assert re.fullmatch(rf"nix/store/b-file\tfile ({BLAKE3}) 2\.0 KiB executable", lines[1])
    assert lines[2] == "nix/store/c-link\tsymlink -> b-file"
    outputs = [o["output"] for o in json.loads(as_json)["outputs"]]
    assert lines[0].split()[2] == "blake3-" + outputs[0]["directory"]["digest"]
    assert lines[1].split()[2] == "blake3-" + outputs[1]["file"]["digest"]


def test_run_prints_readable_results_and_json_on_request(
    tmp_path: Path, shapes_request: Path
) -> None:
    readable = builder("run", str(shapes_request), data=tmp_path / "data")
    as_json = builder("run", str(shapes_request), "--json", data=tmp_path / "data")
    check_readable_outputs(readable.stdout.decode(), as_json.stdout.decode())


def test_import_prints_what_run_prints(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(b"\0" * 3000)
    out = builder("castore", "import", str(tree), str(tree / "big"), data=tmp_path / "d").stdout
    first, second = out.decode().splitlines()
    assert re.fullmatch(rf"{re.escape(str(tree))}\tdirectory {BLAKE3} 2 entries", first)
    assert re.fullmatch(rf"{re.escape(str(tree / 'big'))}\tfile {BLAKE3} 2\.9 KiB", second)


def _forms(printed: str) -> list[str]:
    """Every way the product shows the digest it printed as ``printed``."""
    digest = Digest.parse(printed)
    plain = base64.b64encode(digest).decode()
    return [
        printed,
        plain,
        base64.urlsafe_b64encode(digest).decode(),
        digest.hex(),
    ]


def test_every_digest_form_is_accepted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tree = EXAMPLES / "hello-tree"
    file = tree / "bin" / "hello"
    imported = builder("castore", "import", "--json", str(tree), str(file), data=data).stdout
    tree_json, file_json = (json.loads(line) for line in imported.decode().splitlines())
    plain_tree = tree_json["directory"]["digest"]
    plain_file = file_json["file"]["digest"]
    text = builder("castore", "import", str(tree), str(file), data=data).stdout.decode()
    tree_printed, file_printed = (line.split("\t")[1].split()[1] for line in text.splitlines())
    assert _forms(tree_printed)[1] == plain_tree
    assert _forms(file_printed)[1] == plain_file

    nar_hash = builder("castore", "nar", "--hash", str(tree), data=data).stdout
    for i, form in enumerate(_forms(tree_printed)):
        assert builder("castore", "nar", "--hash", form, data=data).stdout == nar_hash
        dest = tmp_path / f"tree-{i}"
        builder("castore", "materialise", form, str(dest), data=data)
        assert (dest / "bin" / "hello").read_bytes() == file.read_bytes()
    for form in _forms(file_printed):
        assert builder("castore", "cat", form, data=data).stdout == file.read_bytes()

"""Every protocol rule on BuildRequest, each violation named by its field."""

from __future__ import annotations

import dataclasses
import time

import pytest

from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from builder.castore.wire import Family
from builder.errors import InvalidArgumentError
from builder.executor.request import (
    AdditionalFile,
    BuildRequest,
    Constraints,
    request_from_proto,
    request_to_proto,
)
from tests.digests import EMPTY_DIGEST


def nix_like() -> BuildRequest:
    return BuildRequest(
        inputs=(
            DirectoryNode(b"aaa-dep", EMPTY_DIGEST, 0),
            FileNode(b"bbb-src", EMPTY_DIGEST, 0, True),
            SymlinkNode(b"ccc-link", b"aaa-dep"),
        ),
        command_args=("/bin/sh", "-c", "echo hi > $out"),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=("nix/store/xyz-out", "nix/store/xyz-out-dev"),
        environment=(("HOME", b"/homeless-shelter"), ("out", b"/nix/store/xyz-out")),
        constraints=Constraints(system="x86_64-linux", available_ro_paths=("/dev/kvm",)),
        additional_files=(AdditionalFile("build/.attr-0", b"data"),),
        refscan_needles=("xyz",),
    )


def test_valid_request_passes() -> None:
    """Every field is set, so each rule met a value and let it through."""
    request = nix_like()
    request.validate()
    unset = [f.name for f in dataclasses.fields(request) if not getattr(request, f.name)]
    assert unset == []


@pytest.mark.parametrize("family", list(Family))
def test_round_trip_through_both_families(family: Family) -> None:
    request = nix_like()
    msg = request_to_proto(request, family)
    assert request_from_proto(type(msg).FromString(msg.SerializeToString())) == request


def _with(**changes: object) -> BuildRequest:
    return dataclasses.replace(nix_like(), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"command_args": ()}, "command_args: empty"),
        ({"command_args": ("",)}, r"command_args\[0\]: empty"),
        ({"working_dir": ""}, "working_dir: path is empty"),
        ({"working_dir": "/build"}, "working_dir: '/build' must be relative"),
        ({"working_dir": "build/../.."}, r"working_dir: .* has a '\.\.' component"),
        ({"inputs_dir": "nix//store"}, "inputs_dir: .* has a 'empty' component"),
        ({"scratch_paths": ("nix/store", "build")}, "scratch_paths: .* not sorted"),
        ({"scratch_paths": ("build", "build")}, "scratch_paths: .* duplicate"),
        ({"scratch_paths": ("./build",)}, r"scratch_paths\[0\]: .* has a '\.' component"),
        ({"inputs_dir": ".scratch-store"}, "inputs_dir: .* the sandbox keeps for itself"),
        (
            {"working_dir": ".scratch-store/build"},
            "working_dir: '.scratch-store/build' lies in '.scratch-store'",
        ),
        ({"outputs": ("elsewhere/out",)}, r"outputs\[0\]: .* not inside any scratch path"),
        ({"outputs": ("nix/store",)}, r"outputs\[0\]: .* not inside any scratch path"),
        ({"outputs": ("nix/store/b", "nix/store/a")}, "outputs: .* not sorted"),
        ({"environment": (("", b"x"),)}, r"environment_vars\[0\]\.key: empty"),
        ({"environment": (("A=B", b"x"),)}, r"environment_vars\[0\]\.key: .* contains '='"),
        ({"environment": (("A", b"x\0y"),)}, r"environment_vars\[0\]\.value: contains NUL"),
        ({"environment": (("B", b""), ("A", b""))}, "environment_vars: .* not sorted"),
        ({"constraints": Constraints(system="")}, "constraints.system: empty"),
        (
            {"constraints": Constraints(system="x", available_ro_paths=("dev/kvm",))},
            r"available_ro_paths\[0\]: .* must be absolute",
        ),
        (
            {"constraints": Constraints(system="x", available_ro_paths=("/b", "/a"))},
            "available_ro_paths: .* not sorted",
        ),
        (
            {"additional_files": (AdditionalFile("etc/passwd", b""),)},
            r"additional_files\[0\]\.path: .* not inside any scratch path",
        ),
        (
            {"additional_files": (AdditionalFile("build/../etc", b""),)},
            r"additional_files\[0\]\.path: .* '\.\.'",
        ),
        (
            {"inputs": (FileNode(b"b", EMPTY_DIGEST, 0), FileNode(b"a", EMPTY_DIGEST, 0))},
            "inputs: .* not sorted",
        ),
        ({"inputs": (FileNode(b"", EMPTY_DIGEST, 0),)}, r"inputs\[0\]: input node has no name"),
        ({"inputs": (SymlinkNode(b"a", b""),)}, r"inputs\[0\] b'a': target is empty"),
        ({"inputs": (FileNode(b"..", EMPTY_DIGEST, 0),)}, r"inputs\[0\]: name b'\.\.'"),
        ({"refscan_needles": ("",)}, r"refscan_needles\[0\]: empty"),
        (
            {"additional_files": (AdditionalFile("build/a", b""), AdditionalFile("build/a", b""))},
            r"additional_files\[1\]\.path: duplicate 'build/a'",
        ),
        ({"working_dir": "nix/store/ccc-link"}, "at or below the symlink input"),
        ({"outputs": ("nix/store/ccc-link/x",)}, "at or below the symlink input"),
        ({"outputs": ("build-x/out",)}, r"outputs\[0\]: .* not inside any scratch path"),
        (
            {"command_args": ("/bin/sh", "x" * 131072)},
            r"command_args\[1\]: 131073 bytes, more than the 131072 exec takes in one string",
        ),
        (
            {"environment": (("A", b"x" * 131070),)},
            r"environment_vars\[0\]: 131073 bytes",
        ),
        (
            {"environment": tuple((f"V{i:03}", b"x" * 100000) for i in range(63))},
            "command_args and environment_vars: .* bytes together, more than the 6291456",
        ),
        (
            {"working_dir": "build" + "/a" * 2045},
            "working_dir: path is 4095 bytes long, more than the limit of 4094",
        ),
        (
            {"additional_files": (AdditionalFile("build/" + "é" * 2045, b""),)},
            r"additional_files\[0\]\.path: path is 4096 bytes long",
        ),
        (
            {"constraints": Constraints(system="x", available_ro_paths=("/" + "d" * 4095,))},
            r"available_ro_paths\[0\]: path is 4095 bytes long",
        ),
    ],
)
def test_rule_violations_name_the_field(changes: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        _with(**changes).validate()


def test_arguments_and_environment_up_to_what_exec_takes_pass() -> None:
    _with(
        command_args=("/bin/sh", "x" * 131071),
        environment=tuple((f"V{i:03}", b"x" * 100000) for i in range(60)),
    ).validate()


def test_paths_up_to_path_max_pass() -> None:
    _with(working_dir="build" + "/a" * 2044, inputs_dir="nix" + "/s" * 2045).validate()


def test_wrong_input_digest_length_named() -> None:
    msg = request_to_proto(nix_like(), Family.TVIX)
    msg.inputs[0].directory.digest = b"\1" * 31
    with pytest.raises(InvalidArgumentError, match=r"inputs\[0\]\.directory\.digest"):
        request_from_proto(msg)


def test_paths_beside_a_symlink_input_pass() -> None:
    _with(outputs=("nix/store/ccc-link-out", "nix/store/ccc-linkx")).validate()


def test_a_million_paths_validate_without_comparing_each_with_each() -> None:
    links = tuple(SymlinkNode(f"link-{i:06}".encode(), b"/") for i in range(20_000))
    files = tuple(AdditionalFile(f"build/f{i:07}", b"") for i in range(1_000_000))
    request = _with(inputs=links, additional_files=files, outputs=("build/out",))
    started = time.monotonic()
    request.validate()
    assert time.monotonic() - started < 20

"""The spec and result travel as JSON between processes and through the CLI."""

import time

import pytest

from sandbox import Bind, File, Limits, SandboxResult, SandboxSpec, Scratch, SpecError, Symlink


def full_spec() -> SandboxSpec:
    return SandboxSpec(
        argv=["/bin/sh", "-c", "true"],
        env={"TEXT": "plain", "RAW": b"\xff\x00bytes"},
        cwd="/build",
        ro_binds=[Bind("/nix/store/abc", "/nix/store/abc")],
        scratch=[Scratch("/build", "/tmp/x"), Scratch("/nix/store", "/tmp/y")],
        files=[File("/build/.attr-0", b"\x00\x01", 0o600)],
        symlinks=[Symlink("/nix/store/abc-link", "abc/bin")],
        network=True,
        ro_paths=["/dev/kvm"],
        shell="/bin/busybox",
        limits=Limits(wall_time=1.5, memory=1 << 20, scratch_bytes=4096),
    )


def test_spec_round_trips_through_json_with_bytes() -> None:
    spec = full_spec()
    again = SandboxSpec.from_json(spec.to_json())
    assert again == spec
    assert again.env["RAW"] == b"\xff\x00bytes"


def test_result_round_trips() -> None:
    result = SandboxResult(exit_code=3, log=b"\xffout", limits_reached=["memory"])
    assert SandboxResult.from_dict(result.to_dict()) == result


@pytest.mark.parametrize(
    "change",
    [
        {"argv": []},
        {"cwd": "build"},
        {"cwd": "/build/../etc"},
        {"ro_binds": [Bind("relative", "/x")]},
        {"ro_binds": [Bind("/a", "/proc/x")]},
        {"ro_binds": [Bind("/a", "/dev")]},
        {"scratch": [Scratch("/build", "/a"), Scratch("/build/sub", "/b")]},
        {
            "scratch": [
                Scratch("/build", "/a"),
                Scratch("/build-x", "/b"),
                Scratch("/build.x", "/c"),
                Scratch("/build/sub", "/d"),
            ]
        },
        {"scratch": [Scratch("/x", "/a")], "ro_binds": [Bind("/b", "/x")]},
        {"env": {"A=B": "c"}},
        {"limits": Limits(memory=0)},
        {"uid": 0},
        {"symlinks": [Symlink("relative", "x")]},
        {"symlinks": [Symlink("/build/l", "")]},
    ],
)
def test_invalid_specs_are_rejected(change: dict) -> None:
    fields = {"argv": ["/bin/true"], **change}
    with pytest.raises(SpecError):
        SandboxSpec(**fields).validate()


def test_garbage_json_is_a_spec_error() -> None:
    with pytest.raises(SpecError):
        SandboxSpec.from_json('{"env": {}}')


def test_scratch_targets_side_by_side_are_accepted() -> None:
    scratch = [Scratch(p, f"/h{i}") for i, p in enumerate(["/b", "/b-x", "/b.x", "/bb/c"])]
    SandboxSpec(argv=["/bin/true"], scratch=scratch).validate()


def test_many_scratch_targets_are_checked_without_comparing_each_with_each() -> None:
    scratch = [Scratch(f"/s{i}", f"/h{i}") for i in range(50_000)]
    started = time.monotonic()
    SandboxSpec(argv=["/bin/true"], scratch=scratch).validate()
    assert time.monotonic() - started < 5

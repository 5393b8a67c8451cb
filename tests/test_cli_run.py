"""``builder run``: the examples executed from their files on the embedded store."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from builder.castore.wire import Family
from builder.executor.request import BuildRequest, Constraints, request_to_proto
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.requirements import missing
from tests.server.test_build_constraints import NETWORK_PROBE, host_listener
from tests.server.test_build_grpc import _request
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(*args: str, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "builder", "run", *args],
        env={**os.environ, "BUILDER_DATA_DIR": str(data)},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )


def test_hello_builds_and_runs(tmp_path: Path) -> None:
    result = run(
        str(EXAMPLES / "hello.toml"), "--json", "--out", str(tmp_path / "out"), data=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert b"Hello, world!" in result.stderr
    response = json.loads(result.stdout)
    assert "directory" in response["outputs"][0]["output"]
    hello = tmp_path / "out" / "00000000000000000000000000000000-hello" / "bin" / "hello"
    assert os.access(hello, os.X_OK)
    assert oct(hello.stat().st_mode & 0o777) == oct(0o555)

    assert hello.stat().st_mtime == 1

    # The same request in protobuf JSON: the result cache answers it.
    again = run(
        str(EXAMPLES / "hello.json"), "--json", "--out", str(tmp_path / "out"), data=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert b"answered from the result cache" in again.stderr
    assert json.loads(again.stdout) == response
    assert os.access(hello, os.X_OK)


def test_multi_output_text_format_with_needles(tmp_path: Path) -> None:
    result = run(str(EXAMPLES / "multi-output.txtpb"), "--json", data=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert len(outputs) == 2
    assert outputs[0].get("needles") is None
    assert outputs[1]["needles"] == ["0"]


def test_additional_files_and_needles(tmp_path: Path) -> None:
    result = run(
        str(EXAMPLES / "additional-files.toml"),
        "--json",
        "--out",
        str(tmp_path / "o"),
        data=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (output,) = json.loads(result.stdout)["outputs"]
    assert output["needles"] == ["0"]
    text = (tmp_path / "o" / "cccccccccccccccccccccccccccccccc-text").read_text()
    assert text.startswith("passed as a file\n")


def test_import_host_path_as_input(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "msg").write_text("from the host\n")
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "commandArgs": ["/bin/sh", "-c", "cat /nix/store/src/msg > /nix/store/out"],
                "workingDir": "build",
                "scratchPaths": ["build", "nix/store"],
                "inputsDir": "nix/store",
                "outputs": ["nix/store/out"],
                "constraints": {"system": "x86_64-linux", "provideBinSh": True},
            }
        )
    )
    out = str(tmp_path / "o")
    result = run(str(request), "--import", f"src={src}", "--out", out, data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "out").read_text() == "from the host\n"
    assert (tmp_path / "imports.sqlite").is_file(), "imports consult the data dir's record"


def test_host_paths_in_a_toml_request_are_taken_from_its_directory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "msg").write_text("from the host\n")
    request = project / "req.toml"
    request.write_text(
        """
command_args = ["/bin/sh", "-c", "cat /nix/store/src/msg > /nix/store/out"]
working_dir = "build"
scratch_paths = ["build", "nix/store"]
inputs_dir = "nix/store"
outputs = ["nix/store/out"]
constraints = { system = "x86_64-linux", provide_bin_sh = true }
inputs = { src = { path = "src" } }
"""
    )
    result = run(str(request), "--out", str(tmp_path / "o"), data=tmp_path)  # cwd is ROOT
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "out").read_text() == "from the host\n"

    other = tmp_path / "other"
    other.mkdir()
    (other / "msg").write_text("from the flag\n")
    flag = f"src={other}"
    result = run(str(request), "--import", flag, "--out", str(tmp_path / "p"), data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "out").read_text() == "from the flag\n"


def test_stored_inputs_by_the_digest_the_cli_prints(tmp_path: Path) -> None:
    imported = subprocess.run(
        [sys.executable, "-m", "builder", "castore", "import", str(EXAMPLES / "hello-tree")],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path)},
        capture_output=True,
        check=True,
        timeout=120,
    )
    kind, digest, size, unit = imported.stdout.decode().split("\t")[1].split()
    assert (kind, unit) == ("directory", "entries")
    request = tmp_path / "req.toml"
    request.write_text(
        f"""
command_args = ["/bin/sh", "-c", "cat /nix/store/tree/greeting > /nix/store/out"]
working_dir = "build"
scratch_paths = ["build", "nix/store"]
inputs_dir = "nix/store"
outputs = ["nix/store/out"]
constraints = {{ system = "x86_64-linux", provide_bin_sh = true }}
inputs = {{ tree = {{ directory = "{digest}", size = {size} }} }}
"""
    )
    result = run(str(request), "--out", str(tmp_path / "o"), data=tmp_path)
    assert result.returncode == 0, result.stderr
    greeting = (EXAMPLES / "hello-tree" / "greeting").read_bytes()
    assert (tmp_path / "o" / "out").read_bytes() == greeting


def show(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "builder", "request", "show", *args],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )


def test_request_show_converts_between_forms(tmp_path: Path) -> None:
    as_toml = show(str(EXAMPLES / "hello.json"))
    assert as_toml.returncode == 0, as_toml.stderr
    assert b'PATH = "/bin"' in as_toml.stdout
    (tmp_path / "hello.toml").write_bytes(as_toml.stdout)
    as_json = show(str(tmp_path / "hello.toml"), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == json.loads((EXAMPLES / "hello.json").read_text())


def test_request_show_checks_the_request(tmp_path: Path) -> None:
    request = tmp_path / "req.toml"
    request.write_text('command_args = ["true"]\nworking_dir = "/abs"\n')
    result = show(str(request))
    assert result.returncode != 0
    assert b"working_dir: '/abs' must be relative" in result.stderr
    assert not result.stdout

    host_path = show(str(EXAMPLES / "compile-c.toml"), "--format", "txtpb")
    assert host_path.returncode != 0
    assert b"a host path to import has no txtpb form" in host_path.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "req.json"),
        ('{"commandArgs": ["true"], "workingDir": "/abs"}', "working_dir"),
        ('{"environmentVars": [{"key": "out", "value": "/nix/store/x-out"}]}', "environmentVars"),
    ],
)
def test_bad_request_files(tmp_path: Path, body: str, message: str) -> None:
    request = tmp_path / "req.json"
    request.write_text(body)
    result = run(str(request), data=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_failed_build_exits_non_zero(tmp_path: Path) -> None:
    request = tmp_path / "req.txtpb"
    request.write_text(
        'command_args: "/bin/sh" command_args: "-c" command_args: "echo oops; exit 4" '
        'working_dir: "build" scratch_paths: "build" inputs_dir: "build/in" outputs: "build/x" '
        'constraints { system: "x86_64-linux" provide_bin_sh: true }'
    )
    result = run(str(request), data=tmp_path)
    assert result.returncode == 100
    assert "exited with code 4" in result.stderr.decode()


# Keeps adding to the scratch dir, so that removing the work dir while the
# build still runs would fail.
WRITE_ON = "i=0; while :; do mkdir -p d/$i && echo x > d/$i/f; i=$((i+1)); done"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_a_local_build_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    """Ctrl-C or a kill stops the build, then removes its work dir; a message, no traceback."""
    marker = sleep_marker(4200 + signum)
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "commandArgs": ["/bin/sh", "-c", f"{marker} & {WRITE_ON}"],
                "workingDir": "build",
                "scratchPaths": ["build"],
                "inputsDir": "build/in",
                "outputs": ["build/x"],
                "constraints": {"system": "x86_64-linux", "provideBinSh": True},
            }
        )
    )
    command = subprocess.Popen(
        [sys.executable, "-m", "builder", "run", str(request)],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:

        def started() -> bool:
            assert command.poll() is None, command.communicate()
            return bool(processes_with(marker))

        wait_for(started, "the build to start")
        command.send_signal(signum)
        _, stderr = command.communicate(timeout=60)
    finally:
        command.kill()
    assert command.returncode == 128 + signum, stderr
    assert f"interrupted by {signum.name}" in stderr.decode()
    assert b"Traceback" not in stderr
    wait_for(lambda: not processes_with(marker), "the build to end with its command")
    assert not list((tmp_path / "data" / "build" / "builds").iterdir())


def test_ctrl_c_at_the_terminal_ends_a_local_build_with_130(tmp_path: Path) -> None:
    """A terminal sends SIGINT to the whole process group, launcher included, once the
    build has started: the command still ends with 130, one line, nothing left behind."""
    marker = sleep_marker(4300)
    request = tmp_path / "req.json"
    request.write_text(
        json.dumps(
            {
                "commandArgs": ["/bin/sh", "-c", f"{marker}; echo x > x"],
                "workingDir": "build",
                "scratchPaths": ["build"],
                "inputsDir": "build/in",
                "outputs": ["build/x"],
                "constraints": {"system": "x86_64-linux", "provideBinSh": True},
            }
        )
    )
    command = subprocess.Popen(
        [sys.executable, "-m", "builder", "run", str(request)],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert command.stderr is not None
        first = command.stderr.readline().decode()
        assert re.fullmatch(r"builder: build [0-9a-f]{32} started\n", first), first
        wait_for(lambda: processes_with(marker), "the build command to run")
        os.killpg(command.pid, signal.SIGINT)
        _, rest = command.communicate(timeout=60)
    finally:
        command.kill()
    assert command.returncode == 130, rest
    assert rest.decode() == "builder: error: interrupted by SIGINT\n"
    wait_for(lambda: not processes_with(marker), "the build to end with its command")
    assert not list((tmp_path / "data" / "build" / "builds").iterdir())


@pytest.mark.parametrize("command", [["run", str(EXAMPLES / "hello.json")], ["serve"]])
def test_a_launcher_that_cannot_start_is_an_error_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    """Whether the command waits for its launcher (serve) or not (run)."""
    listen = ["--listen", f"grpc+unix://{tmp_path}/builder.sock"] if command == ["serve"] else []
    result = subprocess.run(
        [sys.executable, "-m", "builder", *command, *listen],
        env={**os.environ, "BUILDER_DATA_DIR": str(tmp_path), "SANDBOX_UID_BASE": "many"},
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 1, result.stderr
    assert b"$SANDBOX_UID_BASE is 'many'" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the example imports the x86_64 toolchain"
)
def test_compile_c_with_the_hosts_toolchain(tmp_path: Path) -> None:
    if not os.path.isdir("/usr/lib/gcc/x86_64-linux-gnu"):
        missing("the host's gcc (/usr/lib/gcc/x86_64-linux-gnu; Debian package gcc)")
    out = tmp_path / "out"
    result = run(str(EXAMPLES / "compile-c.toml"), "--out", str(out), data=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = b"Hello from C! 1 + 2 + ... + 100 = 5050\n"
    assert (out / "stdout").read_bytes() == expected
    assert expected in result.stderr
    assert subprocess.run([out / "hello"], capture_output=True, check=True).stdout == expected


def test_binary_request_of_the_tvix_family(tmp_path: Path) -> None:
    request = BuildRequest(
        inputs=(),
        command_args=("/bin/sh", "-c", "echo binary > /nix/store/out"),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=("nix/store/out",),
        environment=(),
        constraints=Constraints(system="x86_64-linux", provide_bin_sh=True),
    )
    path = tmp_path / "req.pb"
    path.write_bytes(request_to_proto(request, Family.TVIX).SerializeToString())
    result = run(str(path), "--out", str(tmp_path / "o"), data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "out").read_text() == "binary\n"


def test_network_access_is_allowed_on_ones_own_machine(tmp_path: Path) -> None:
    with host_listener() as (port, accepted):
        request = _request(
            NETWORK_PROBE.format(port=port),
            constraints=Constraints(
                system="x86_64-linux", provide_bin_sh=True, network_access=True
            ),
        )
        path = tmp_path / "req.pb"
        path.write_bytes(request_to_proto(request, Family.SNIX).SerializeToString())
        result = run(str(path), "--out", str(tmp_path / "o"), data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "out").read_text() == "yes\n"
    assert accepted == [b"reached\n"]


@pytest.mark.parametrize(("flags", "where"), [((), "memory"), (("--build-dirs-on-disk",), "disk")])
def test_the_build_directory_is_in_memory_unless_asked_for_on_disk(
    tmp_path: Path, flags: tuple[str, ...], where: str
) -> None:
    # The directory of its filesystem that is mounted at /build: a host dir of
    # the work tree when it is on disk.
    script = (
        "while read id parent numbers root dir rest; do"
        ' [ $dir = /build ] && printf "$root" > /nix/store/out; done < /proc/self/mountinfo;'
        " test -s /nix/store/out"
    )
    path = tmp_path / "req.pb"
    path.write_bytes(request_to_proto(_request(script), Family.SNIX).SerializeToString())
    result = run(str(path), "--out", str(tmp_path / "o"), *flags, data=tmp_path)
    assert result.returncode == 0, result.stderr
    on_disk = (tmp_path / "o" / "out").read_text().endswith("/scratch-0")
    assert on_disk == (where == "disk")

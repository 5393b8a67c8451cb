"""The attacks on host-side path handling, over gRPC against ``builder serve``.

The server runs as root (rootful launcher) and as an ordinary user (rootless
launcher); each canary directory is closed to everyone but that server's user,
as the host directories the attacks aimed at were.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from builder.castore.fs.ingest import ingest_path
from builder.castore.grpc.channel import open_channel
from builder.castore.nodes import Node, SymlinkNode
from builder.castore.wire import Family
from builder.executor.request import AdditionalFile, BuildRequest, Constraints, request_to_proto
from builder.proto.builder.v1 import build_events_pb2
from builder.proto.builder.v1 import build_events_pb2_grpc as events_grpc
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.store.store import Store
from tests.canary import make_canary, snapshot
from tests.requirements import require_root
from tests.sandbox.conftest import ROOTLESS_UID, _rootless_python
from tests.test_cli_build_remote import ROOT, serving


@dataclass
class Server:
    address: str
    home: Path
    uid: int

    def canary(self, name: str) -> Path:
        return make_canary(self.home / name, self.uid)

    def build(self, request: BuildRequest) -> None:
        channel = open_channel(self.address)
        try:
            stub = snix_rpc.BuildServiceStub(channel)
            stub.DoBuild(request_to_proto(request, Family.SNIX), timeout=120)
        finally:
            channel.close()

    def stream(self, request: BuildRequest) -> list[build_events_pb2.BuildEvent]:
        channel = open_channel(self.address)
        try:
            stub = events_grpc.BuildEventsStub(channel)
            return list(stub.StreamBuild(request_to_proto(request, Family.SNIX), timeout=120))
        finally:
            channel.close()


@pytest.fixture(scope="module", params=["rootful", "rootless"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    require_root("these tests start the server as root and as another user")
    uid = 0 if request.param == "rootful" else ROOTLESS_UID
    home = Path(tempfile.mkdtemp(prefix=f"host-paths-{request.param}-", dir="/tmp"))
    try:
        home.chmod(0o755)
        os.chown(home, uid, uid)
        listen = f"grpc+unix://{home}/builder.sock"
        if uid == 0:
            context = serving(home, listen)
        else:
            # The venv's interpreter lives where the user cannot look; its
            # packages and the checkout are readable.
            pythonpath = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
            python = _rootless_python(uid, Path(pythonpath))
            context = serving(home, listen, user=uid, python=python, pythonpath=pythonpath)
        with context as started:
            yield Server(started.address, home, uid)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _request(script: str, inputs: tuple[Node, ...], **fields: object) -> BuildRequest:
    """The layout of the reproduced attacks: inputs in ``nix/store`` inside scratch ``nix``."""
    values: dict[str, object] = {
        "inputs": inputs,
        "command_args": ("/bin/sh", "-c", script),
        "working_dir": "build",
        "scratch_paths": ("build", "nix"),
        "inputs_dir": "nix/store",
        "outputs": ("build/out",),
        "environment": (("PATH", b"/bin"),),
        "constraints": Constraints(system="x86_64-linux", provide_bin_sh=True),
    }
    values.update(fields)
    return BuildRequest(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        (
            "additional_files[0].path",
            {"additional_files": (AdditionalFile("nix/store/evil/PWNED", b"x"),)},
        ),
        ("working_dir", {"working_dir": "nix/store/evil/sub"}),
    ],
)
def test_paths_through_a_symlink_input_refused(
    server: Server, field: str, changes: dict[str, object]
) -> None:
    canary = server.canary(f"canary-{field.split('[')[0]}")
    before = snapshot(canary)
    evil = SymlinkNode(b"evil", os.fsencode(canary))
    request = _request("echo x > /build/out", (evil,), **changes)
    with pytest.raises(grpc.RpcError) as info:
        server.build(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert "symlink input" in info.value.details()
    assert snapshot(canary) == before


def test_cleanup_leaves_a_planted_store_symlink_alone(server: Server) -> None:
    canary = server.canary("canary-cleanup")
    os.chmod(canary, 0o755)
    (canary / "aaa-dir").mkdir()
    (canary / "bbb-file").touch()
    for entry in (canary / "aaa-dir", canary / "bbb-file"):
        os.chown(entry, server.uid, server.uid)
    canary.chmod(0o700)
    before = snapshot(canary)
    src = server.home / "src"
    src.mkdir()
    (src / "data").write_text("input\n")
    (server.home / "file").write_text("file input\n")
    with Store.open(f"grpc+unix://{server.home}/builder.sock") as store:
        directory = ingest_path(src, store.blobs, store.directories, b"aaa-dir")
        file = ingest_path(server.home / "file", store.blobs, store.directories, b"bbb-file")
    script = f"cd /nix && mv store old && ln -s {canary} store && echo done > /build/out"
    server.build(_request(script, (directory, file)))
    assert snapshot(canary) == before


def test_mountinfo_does_not_show_the_build_id(server: Server) -> None:
    """Bind sources show in mountinfo; the work directory among them is a random name."""
    events = server.stream(_request("cat /proc/self/mountinfo; echo x > /build/out", ()))
    build_id = events[0].started.build_id
    log = b"".join(e.log.data for e in events if e.HasField("log"))
    assert events[-1].HasField("completed")
    assert b"/builds/" in log
    assert build_id.encode() not in log

"""Constraints, cache eviction under load and kept logs, end to end over gRPC."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from builder.castore.fs.ingest import ingest_path
from builder.castore.wire import Family
from builder.executor.request import Constraints, request_to_proto
from builder.proto.builder.v1 import build_events_pb2
from sandbox import Launcher
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.server.test_build_grpc import (  # noqa: F401
    Served,
    _request,
    _serve,
    cut_sleep_short,
    launcher,
)
from tests.waiting import wait_for

X86 = "x86_64-linux"


@pytest.fixture
def served(tmp_path: Path, launcher: Launcher) -> Served:  # noqa: F811
    gen = _serve(tmp_path, launcher, allowed_ro_paths=(str(tmp_path / "shared.txt"),))
    yield next(gen)
    next(gen, None)


def _fails(served: Served, request, code: grpc.StatusCode, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert info.value.code() == code
    assert text in info.value.details()


def test_allowed_ro_path_is_visible(served: Served, tmp_path: Path) -> None:
    shared = tmp_path / "shared.txt"
    shared.write_text("operator-provided\n")
    request = _request(
        f"cat {shared} > /nix/store/out",
        constraints=Constraints(system=X86, provide_bin_sh=True, available_ro_paths=(str(shared),)),
    )
    response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert response.outputs[0].output.file.size == len("operator-provided\n")


def test_ro_path_off_the_allow_list_refused(served: Served) -> None:
    request = _request(
        "true", constraints=Constraints(system=X86, available_ro_paths=("/etc/shadow",))
    )
    _fails(served, request, grpc.StatusCode.FAILED_PRECONDITION, "allow-list")


def test_min_memory_beyond_host_refused(served: Served) -> None:
    request = _request("true", constraints=Constraints(system=X86, min_memory=1 << 60))
    _fails(served, request, grpc.StatusCode.FAILED_PRECONDITION, "constraints.min_memory")


def test_no_bin_sh_unless_asked(served: Served) -> None:
    request = _request("true", constraints=Constraints(system=X86))
    _fails(served, request, grpc.StatusCode.ABORTED, "build failed")


@contextmanager
def host_listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on the host's loopback: its port, and what each connection sent.

    The list is complete once the context has exited.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[bytes] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    accepted.append(conn.recv(100))

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join()


NETWORK_PROBE = (
    "echo reached | nc -w 2 127.0.0.1 {port} && echo yes > /nix/store/out "
    "|| echo no > /nix/store/out"
)


@pytest.fixture
def network_served(tmp_path: Path, launcher: Launcher) -> Served:  # noqa: F811
    gen = _serve(tmp_path, launcher, allow_network=True)
    yield next(gen)
    next(gen, None)


def test_network_access_refused_unless_the_operator_allows_it(served: Served) -> None:
    request = _request(
        "echo x > /nix/store/out",
        constraints=Constraints(system=X86, provide_bin_sh=True, network_access=True),
    )
    _fails(
        served,
        request,
        grpc.StatusCode.FAILED_PRECONDITION,
        "constraints.network_access: this builder does not allow network access "
        "(start it with --allow-network)",
    )


@pytest.mark.parametrize("network", [False, True])
def test_network_access_only_when_asked(network_served: Served, network: bool) -> None:
    served = network_served
    with host_listener() as (port, accepted):
        request = _request(
            NETWORK_PROBE.format(port=port),
            constraints=Constraints(system=X86, provide_bin_sh=True, network_access=network),
        )
        response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert response.outputs[0].output.file.size == (4 if network else 3)
    assert accepted == ([b"reached\n"] if network else [])


def test_eviction_spares_a_tree_in_use(tmp_path: Path, launcher: Launcher) -> None:  # noqa: F811
    gen = _serve(tmp_path, launcher, cache_max_bytes=1)
    served = next(gen)
    try:
        nodes = []
        for name in ("aaa-first", "bbb-second"):
            src = tmp_path / name
            src.mkdir()
            (src / "data").write_text(name * 100)
            nodes.append(ingest_path(src, served.store.blobs, served.store.directories))
        marker = sleep_marker(4175)
        slow = _request(
            f"{marker}; cat /nix/store/aaa-first/data > /nix/store/out", inputs=(nodes[0],)
        )
        future = served.snix().DoBuild.future(request_to_proto(slow, Family.SNIX), timeout=600)
        wait_for(lambda: processes_with(marker), "the build holding the first tree to run")
        quick = _request("cat /nix/store/bbb-second/data > /nix/store/out", inputs=(nodes[1],))
        served.snix().DoBuild(request_to_proto(quick, Family.SNIX), timeout=60)
        cut_sleep_short(marker)
        assert future.result().outputs[0].output.file.size == len("aaa-first") * 100
        stats = served.service.cache.stats()
        assert stats.evictions >= 2
        assert stats.in_use == 0
        assert stats.trees == 0
    finally:
        next(gen, None)


def test_log_kept_after_build(served: Served) -> None:
    msg = request_to_proto(_request("echo kept-line; echo x > /nix/store/out"), Family.SNIX)
    events = list(served.events().StreamBuild(msg, timeout=60))
    build_id = events[0].started.build_id
    chunks = served.events().GetLog(build_events_pb2.GetLogRequest(build_id=build_id), timeout=30)
    assert b"kept-line" in b"".join(c.data for c in chunks)
    with pytest.raises(grpc.RpcError) as info:
        list(served.events().GetLog(build_events_pb2.GetLogRequest(build_id="nope"), timeout=30))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

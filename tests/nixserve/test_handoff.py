"""``--store handoff+unix://...``: the program relays its connection to a real ``builder serve``.

The server runs the session in a thread of its own, on its store and build
service; the program only passes its descriptors and exits with the
session's status. The server is started with fewer session slots than the
tests open connections at once, so the bound is exercised too.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import os
import re
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.isolation import sleep_marker
from tests.nixserve.serve_client import (
    ServeClient,
    add_busybox,
    nar,
    nar_file,
    random_path,
    settings,
    shell_derivation,
    string,
    strings,
    u64,
)
from tests.processes import processes_with
from tests.requirements import require_root
from tests.test_cli_build_remote import Server, serving
from tests.waiting import wait_for

SESSIONS = 2
MISC_FAILURE = 9


@dataclass
class Handoff:
    server: Server
    socket: Path

    @property
    def store(self) -> str:
        return f"handoff+unix://{self.socket}"

    def client(self) -> ServeClient:
        return ServeClient(self.store)

    def alive(self) -> bool:
        return self.server.process.poll() is None


@pytest.fixture(scope="module")
def handoff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Handoff]:
    require_root("the server's builds run in sandboxes")
    tmp = tmp_path_factory.mktemp("handoff")
    path = tmp / "handoff.sock"
    listen = f"grpc+unix://{tmp}/builder.sock"
    options = ("--nix-handoff", str(path), "--nix-sessions", str(SESSIONS))
    with serving(tmp, listen, *options) as server:
        yield Handoff(server, path)
        assert server.process.poll() is None, server.log.read_text()


def test_add_build_query_and_dump(handoff: Handoff) -> None:
    client = handoff.client()
    try:
        client.handshake()
        busybox = add_busybox(client)
        drv_path, out, drv = shell_derivation(busybox, f"echo relayed; echo {busybox} > $out")
        result = client.build_derivation(drv_path, drv, settings())
        assert (result.status, result.message) == (0, "")
        [info] = client.query_path_infos([out])
        assert info.references == [busybox]
        assert f"{busybox}\n".encode() in client.dump(out, info.nar_size)
        # The server built it: the relay started no launcher, no spare, nothing.
        assert psutil.Process(client.process.pid).children(recursive=True) == []
        code, stderr = client.finish()
        assert code == 0
        assert "relayed\n" in stderr
        # The server logs the build like a gRPC caller's, naming the relay as its peer.
        peer = f"nix-handoff:pid:{client.process.pid}:uid:{os.geteuid()}"
        ended = re.compile(
            rf"build finished build_id=[0-9a-f]{{32}} peer={re.escape(peer)} family=nix "
            r"outcome=succeeded duration_seconds="
        )
        assert ended.search(handoff.server.log.read_text()), handoff.server.log.read_text()
    finally:
        client.kill()
    # The next connection sees what the server stored for the first.
    again = handoff.client()
    try:
        again.handshake()
        assert again.query_valid([busybox, out]) == sorted([busybox, out], key=lambda p: p[11:])
        assert again.finish() == (0, "")
    finally:
        again.kill()


def test_network_follows_the_servers_setting(handoff: Handoff) -> None:
    client = handoff.client()
    try:
        client.handshake()
        busybox = add_busybox(client)
        digest = hashlib.sha256(b"x\n").hexdigest()
        drv_path, out, drv = shell_derivation(
            busybox, "echo x > $out", "fetch", fixed=("sha256", digest)
        )
        result = client.build_derivation(drv_path, drv, settings())
        assert result.status == MISC_FAILURE
        assert "--allow-network" in result.message
        assert client.query_valid([out]) == []
    finally:
        client.kill()


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.sock"
    client = ServeClient(f"handoff+unix://{missing}")
    # The relay answers the handshake itself, then finds no server to hand over to.
    client.handshake()
    code, stderr = client.finish()
    assert code == 1
    assert stderr.startswith(f"error: cannot reach the builder at {missing}: "), stderr


def _raw_handoff(path: Path, header: bytes) -> tuple[bytes, bytes]:
    """Hand over fresh pipes with ``header``: the status answered and what the log received."""
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    log_read, log_write = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        rights = array.array("i", [in_read, out_write, log_write]).tobytes()
        sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        for fd in (in_read, out_write, log_write):
            os.close(fd)
        status = sock.recv(16)
    os.close(in_write)
    with os.fdopen(log_read, "rb") as log, os.fdopen(out_read, "rb") as out:
        assert out.read() == b""
        return status, log.read()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (struct.pack("<4sIIQ", b"XXXX", 2, 1, 0x207), b"hand-off magic b'XXXX'"),
        (
            struct.pack("<4sIIQ", b"BNXH", 99, 1, 0x207),
            b"hand-off version 99, this builder speaks 2",
        ),
        (struct.pack("<4sIIQ", b"BNXH", 2, 1, 0x103), b"unsupported client protocol version"),
        (b"BNXH", b"hand-off header is 4 bytes, expected 20"),
    ],
)
def test_bad_header_is_refused(handoff: Handoff, header: bytes, message: bytes) -> None:
    status, log = _raw_handoff(handoff.socket, header)
    assert status == b"\x01"
    assert log.startswith(b"error: "), log
    assert message in log
    assert handoff.alive()


def test_header_without_descriptors_is_refused(handoff: Handoff) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(handoff.socket))
        sock.sendall(struct.pack("<4sIIQ", b"BNXH", 2, 1, 0x207))
        assert sock.recv(16) == b"\x01"
    assert "0 descriptors sent, expected 3" in handoff.server.log.read_text()


def test_more_connections_than_session_slots(handoff: Handoff) -> None:
    """Connections past the bound wait for a slot, and all are served."""
    count = 3 * SESSIONS + 1
    clients = [handoff.client() for _ in range(count)]
    outcomes: list[tuple[int, str] | BaseException] = [RuntimeError("not run")] * count

    def converse(i: int) -> None:
        try:
            clients[i].handshake()
            path = random_path(f"many-{i}")
            clients[i].add_to_store_nar(path, nar(nar_file(f"{i}\n".encode())))
            assert clients[i].query_valid([path]) == [path]
            outcomes[i] = clients[i].finish()
        except BaseException as exc:  # reported below, with the others
            outcomes[i] = exc

    threads = [threading.Thread(target=converse, args=(i,)) for i in range(count)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for client in clients:
            client.kill()
    assert outcomes == [(0, "")] * count


def test_hangup_cancels_the_build_within_a_second(handoff: Handoff) -> None:
    client = handoff.client()
    try:
        client.handshake()
        busybox = add_busybox(client)
        marker = sleep_marker(4545)
        drv_path, _, drv = shell_derivation(busybox, marker)
        client.send(u64(8) + string(drv_path) + drv.encode() + settings())
        wait_for(lambda: processes_with(marker), "the build to start on the server")
        hung_up = time.monotonic()
        client.stdin.close()
        client.process.stdin = None
        wait_for(lambda: not processes_with(marker), "the build to end with its client", 1.0)
        took = time.monotonic() - hung_up
        code, stderr = client.finish(timeout=30)
        assert code == 1
        assert "the client closed the connection" in stderr
        assert took <= 1.0
    finally:
        client.kill()
    assert handoff.alive()


def test_a_failing_session_leaves_the_others_alone(handoff: Handoff) -> None:
    steady = handoff.client()
    broken = handoff.client()
    try:
        steady.handshake()
        busybox = add_busybox(steady)
        broken.handshake()
        broken.send(u64(77))
        code, stderr = broken.finish()
        assert code == 1
        assert stderr == "error: unknown serve command 77\n"
        drv_path, out, drv = shell_derivation(busybox, "echo steady > $out")
        assert steady.build_derivation(drv_path, drv, settings()).status == 0
        assert steady.query_valid([out]) == [out]
        assert steady.finish() == (0, "")
    finally:
        steady.kill()
        broken.kill()


def test_server_serves_on_after_a_client_dies_mid_nar(handoff: Handoff) -> None:
    client = handoff.client()
    path = random_path("half")
    contents = nar(nar_file(b"y" * 100_000))
    try:
        client.handshake()
        digest = hashlib.sha256(contents).hexdigest()
        client.send(
            u64(9) + string(path) + string("") + string(digest) + strings([]) + u64(0)
            + u64(len(contents)) + u64(0) + strings([]) + string("")
            + contents[: len(contents) // 2]
        )  # fmt: skip
    finally:
        # The relay dies, then the client's end of the connection with it.
        client.kill()
    after = handoff.client()
    try:
        after.handshake()
        assert after.query_valid([path]) == []
        after.add_to_store_nar(path, contents)
        assert after.query_valid([path]) == [path]
        assert after.finish() == (0, "")
    finally:
        after.kill()
    assert handoff.alive()


def test_sessions_leave_no_descriptors_behind(handoff: Handoff) -> None:
    """Every Nix connection is a session thread; what it opened is closed when it ends.

    Each session looks a path up, which touches the server's databases: a
    connection per thread used to stay open after its thread ended.
    """

    def session() -> None:
        client = handoff.client()
        client.handshake()
        assert client.query_valid([random_path("absent")]) == []
        assert client.finish()[0] == 0

    server = psutil.Process(handoff.server.process.pid)
    session()
    before = server.num_fds()
    for _ in range(30):
        session()
    # The last session's thread may still be closing its connection.
    wait_for(lambda: server.num_fds() <= before + 2, "the sessions' descriptors to close")


def _pipe_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def test_a_client_not_reading_its_log_holds_up_no_other_build(handoff: Handoff) -> None:
    """The server's launcher hands every build's log over on one thread; one stuck reader must
    not hold up another session's build."""
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    log_read, log_write = os.pipe()
    capacity = fcntl.fcntl(log_write, fcntl.F_GETPIPE_SZ)
    noisy = handoff.client()
    try:
        noisy.handshake()
        busybox = add_busybox(noisy)
    finally:
        noisy.finish()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(handoff.socket))
            header = struct.pack("<4sIIQ", b"BNXH", 2, 1, 0x207)
            rights = array.array("i", [in_read, out_write, log_write]).tobytes()
            sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            for fd in (in_read, out_write, log_write):
                os.close(fd)
            script = f"yes log-line | head -c {8 * capacity}; echo > $out"
            drv_path, _, drv = shell_derivation(busybox, script, "noisy")
            os.write(in_write, u64(8) + string(drv_path) + drv.encode() + settings())
            # The noisy build's log fills its pipe, which nobody reads.
            wait_for(lambda: _pipe_bytes(log_read) >= capacity, "the unread log pipe to fill")
            quiet = handoff.client()
            try:
                quiet.handshake()
                drv_path, _, drv = shell_derivation(busybox, "echo quiet > $out", "quiet")
                answered: list[int] = []
                builder = threading.Thread(
                    target=lambda: answered.append(
                        quiet.build_derivation(drv_path, drv, settings()).status
                    )
                )
                builder.start()
                builder.join(60)
                assert answered == [0], "the quiet build waited for the unread log"
            finally:
                quiet.kill()
    finally:
        for fd in (in_write, out_read, log_read):
            os.close(fd)
    assert handoff.alive()


def test_refused_hand_offs_whose_log_is_full_give_their_slots_back(handoff: Handoff) -> None:
    """The refusal is written to the peer's log; a peer that never reads it holds no slot."""
    held = []
    for _ in range(SESSIONS):
        in_read, in_write = os.pipe()
        out_read, out_write = os.pipe()
        log_read, log_write = os.pipe()
        os.write(log_write, b"x" * fcntl.fcntl(log_write, fcntl.F_GETPIPE_SZ))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(handoff.socket))
            rights = array.array("i", [in_read, out_write, log_write]).tobytes()
            header = struct.pack("<4sIIQ", b"XXXX", 2, 1, 0x207)
            sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        for fd in (in_read, out_write, log_write):
            os.close(fd)
        held += [in_write, out_read, log_read]
    try:
        answered: list[list[str]] = []

        def query() -> None:
            client = handoff.client()
            try:
                client.handshake()
                answered.append(client.query_valid([random_path("absent")]))
            finally:
                client.kill()

        querying = threading.Thread(target=query)
        querying.start()
        querying.join(60)
        assert answered == [[]], "every session slot stayed taken by a refused hand-off"
    finally:
        for fd in held:
            os.close(fd)

"""The serve protocol against the installed program: framing, each command, every way to fail.

Every failure must leave a clear message on stderr, a non-zero exit status
and nothing recorded (a fresh connection finds the path invalid).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import socket
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from builder.store import nixbase32
from tests.nixserve.serve_client import (
    CLIENT_MAGIC,
    EXPORT_MAGIC,
    PROGRAM,
    SERVER_MAGIC,
    TRANSCRIPTS,
    VERSION,
    ServeClient,
    nar,
    nar_directory,
    nar_file,
    random_path,
    string,
    strings,
    u64,
)
from tests.processes import strays
from tests.waiting import wait_for


def _store(tmp_path: Path) -> str:
    return str(tmp_path / "data")


def _valid_in_fresh_connection(store: str, paths: list[str]) -> list[str]:
    client = ServeClient(store)
    try:
        client.handshake()
        valid = client.query_valid(paths)
        assert client.finish() == (0, "")
        return valid
    finally:
        client.kill()


def _fails_with(client: ServeClient, data: bytes, message: str) -> str:
    with contextlib.suppress(BrokenPipeError):
        client.send(data)
    code, stderr = client.finish()
    assert code == 1, stderr
    assert message in stderr
    assert stderr.startswith("error: "), stderr
    return stderr


def test_handshake_and_clean_exit_at_a_command_boundary(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    assert client.finish() == (0, "")


def _launchers_under(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "sandbox.forkserver" in child.cmdline():
                found.append(child)
    return found


def test_the_launcher_starts_at_the_handshake_and_ends_with_a_connection_that_never_builds(
    tmp_path: Path,
) -> None:
    client = ServeClient(_store(tmp_path))
    try:
        client.handshake()
        wait_for(
            lambda: _launchers_under(client.process.pid), "a launcher spawned at the handshake"
        )
        assert client.query_valid([random_path("absent")]) == []
        assert client.finish() == (0, "")
    finally:
        client.kill()
    assert not [p for p in strays() if "sandbox.forkserver" in p.cmdline()]


def test_bad_magic(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.send(u64(0x1234))
    code, stderr = client.finish()
    assert code == 1
    assert "error: protocol mismatch: handshake magic 0x1234" in stderr
    assert client.unread == b""


def test_old_client_version(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.send(u64(CLIENT_MAGIC))
    assert client.u64() == SERVER_MAGIC
    assert client.u64() == VERSION
    client.send(u64(0x203))
    code, stderr = client.finish()
    assert code == 1
    assert "unsupported client protocol version 2.3 (0x203)" in stderr


def test_other_major_version(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.send(u64(CLIENT_MAGIC) + u64(0x307))
    code, stderr = client.finish()
    assert code == 1
    assert "unsupported client protocol version 3.7" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--write"], "--serve is required"),
        (["--serve", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_command_line_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run([str(PROGRAM), *args], capture_output=True, input=b"", check=False)
    assert done.returncode == 2
    assert message in done.stderr.decode()
    assert done.stdout == b""


def test_relative_store_is_refused(tmp_path: Path) -> None:
    client = ServeClient("relative/dir")
    client.handshake()
    code, stderr = client.finish()
    assert code == 1
    assert "expected an absolute data directory" in stderr


def test_unknown_command(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    _fails_with(client, u64(42), "error: unknown serve command 42")


def test_end_of_input_inside_a_command(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    # QueryValidPaths: lock, substitute, then a list that says 2 paths but carries 1.
    path = random_path("x")
    stderr = _fails_with(
        client,
        u64(1) + u64(0) + u64(0) + u64(2) + string(path),
        "unexpected end of input while reading paths[1] length",
    )
    assert "Traceback" not in stderr


def test_non_zero_padding(tmp_path: Path) -> None:
    store = _store(tmp_path)
    client = ServeClient(store)
    client.handshake()
    path = random_path("padded")
    data = path.encode()
    assert len(data) % 8
    framed = u64(len(data)) + data + b"\x01" * (-len(data) % 8)
    _fails_with(client, u64(1) + u64(0) + u64(0) + u64(1) + framed, "non-zero padding")


def test_oversized_list_is_refused_before_reading_it(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    _fails_with(client, u64(1) + u64(0) + u64(0) + u64(1 << 40), "more than the limit")


def test_oversized_path_string_is_refused(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    _fails_with(client, u64(3) + u64(1 << 20), "path: 1048576 bytes, more than the limit of 4096")


def test_add_query_dump_and_closure(tmp_path: Path) -> None:
    store = _store(tmp_path)
    dep = random_path("dep")
    top = random_path("top")
    deriver = random_path("top.drv")
    dep_nar = nar(nar_file(b"dependency\n"))
    top_nar = nar(nar_directory({"bin": nar_file(b"#!x\n", True), "ref": nar_file(dep.encode())}))
    ca = "fixed:r:sha256:" + nixbase32.encode(hashlib.sha256(b"x").digest())
    signature = "cache.example-1:" + "A" * 88
    client = ServeClient(store)
    try:
        client.handshake()
        assert client.query_valid([dep, top]) == []
        client.add_to_store_nar(dep, dep_nar)
        client.add_to_store_nar(
            top, top_nar, references=[dep, top], deriver=deriver, ca=ca, signatures=[signature]
        )
        assert client.query_valid([top, dep, random_path("absent")]) == sorted(
            [dep, top], key=lambda p: p[11:]
        )
        infos = {i.path: i for i in client.query_path_infos([top, dep, random_path("gone")])}
        assert set(infos) == {dep, top}
        info = infos[top]
        assert info.deriver == deriver
        assert info.references == sorted([dep, top], key=lambda p: p[11:])
        assert info.download_size == info.nar_size == len(top_nar)
        assert info.nar_hash == "sha256:" + nixbase32.encode(hashlib.sha256(top_nar).digest())
        assert info.ca == ca
        assert info.signatures == [signature]
        assert infos[dep].deriver == "" and infos[dep].ca == "" and infos[dep].signatures == []
        assert client.dump(top, len(top_nar)) == top_nar
        assert client.dump(dep, len(dep_nar)) == dep_nar
        # QueryClosure without outputs.
        client.send(u64(7) + u64(0) + strings([top]))
        assert sorted(client.strings()) == sorted([dep, top])
        # Adding a valid path again consumes its NAR and changes nothing.
        client.add_to_store_nar(dep, nar(nar_file(b"other contents\n")))
        assert client.dump(dep, len(dep_nar)) == dep_nar
        assert client.finish() == (0, "")
    finally:
        client.kill()


def test_export_then_import_into_another_store(tmp_path: Path) -> None:
    first, second = str(tmp_path / "one"), str(tmp_path / "two")
    dep, top = random_path("dep"), random_path("top")
    dep_nar, top_nar = nar(nar_file(b"d\n")), nar(nar_file(dep.encode()))
    client = ServeClient(first)
    try:
        client.handshake()
        client.add_to_store_nar(dep, dep_nar)
        client.add_to_store_nar(top, top_nar, references=[dep])
        client.send(u64(5) + u64(0) + strings([top, dep]))
        # References first: dep, then top.
        expected = b""
        for path, body, refs in ((dep, dep_nar, []), (top, top_nar, [dep])):
            expected += u64(1) + body + u64(EXPORT_MAGIC) + string(path) + strings(refs)
            expected += string("") + u64(0)
        expected += u64(0)
        stream = client.exact(len(expected))
        assert stream == expected
        assert client.finish() == (0, "")
    finally:
        client.kill()
    other = ServeClient(second)
    try:
        other.handshake()
        other.send(u64(4) + stream)
        assert other.u64() == 1
        infos = {i.path: i for i in other.query_path_infos([dep, top])}
        assert infos[top].references == [dep]
        assert infos[top].nar_hash == "sha256:" + nixbase32.encode(hashlib.sha256(top_nar).digest())
        assert other.dump(top, len(top_nar)) == top_nar
        assert other.finish() == (0, "")
    finally:
        other.kill()


def test_import_with_a_missing_reference_records_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path, missing = random_path("p"), random_path("missing")
    body = nar(nar_file(b"p"))
    stream = u64(1) + body + u64(EXPORT_MAGIC) + string(path) + strings([missing])
    stream += string("") + u64(0) + u64(0)
    client = ServeClient(store)
    client.handshake()
    _fails_with(client, u64(4) + stream, "references are not valid here")
    assert _valid_in_fresh_connection(store, [path]) == []


def test_add_with_a_missing_reference_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = random_path("p")
    body = nar(nar_file(b"p"))
    client = ServeClient(store)
    client.handshake()
    command = u64(9) + string(path) + string("") + string(hashlib.sha256(body).hexdigest())
    command += strings([random_path("nowhere")]) + u64(0) + u64(len(body)) + u64(0)
    command += strings([]) + string("") + body
    _fails_with(client, command, "references are not valid here")
    assert _valid_in_fresh_connection(store, [path]) == []


def _add_command(path: str, body: bytes, digest: str, size: int) -> bytes:
    return (
        u64(9)
        + string(path)
        + string("")
        + string(digest)
        + strings([])
        + u64(0)
        + u64(size)
        + u64(0)
        + strings([])
        + string("")
    )


def test_truncated_nar(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = random_path("truncated")
    body = nar(nar_directory({"a": nar_file(b"x" * 5000), "b": nar_file(b"y")}))
    client = ServeClient(store)
    client.handshake()
    command = _add_command(path, body, hashlib.sha256(body).hexdigest(), len(body))
    _fails_with(client, command + body[: len(body) // 2], "error: ")
    assert _valid_in_fresh_connection(store, [path]) == []


def test_nar_with_the_wrong_hash(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = random_path("wrong-hash")
    body = nar(nar_file(b"contents\n"))
    client = ServeClient(store)
    client.handshake()
    command = _add_command(path, body, hashlib.sha256(b"else").hexdigest(), len(body))
    _fails_with(client, command + body, "sha256")
    assert _valid_in_fresh_connection(store, [path]) == []


def test_nar_longer_than_declared(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = random_path("short-size")
    body = nar(nar_file(b"contents\n"))
    client = ServeClient(store)
    client.handshake()
    command = _add_command(path, body, hashlib.sha256(body).hexdigest(), len(body) - 8)
    _fails_with(client, command + body, "error: ")
    assert _valid_in_fresh_connection(store, [path]) == []


def test_dump_of_an_invalid_path(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    path = random_path("absent")
    _fails_with(client, u64(3) + string(path), f"path '{path}' is not valid")


def test_malformed_store_path(tmp_path: Path) -> None:
    client = ServeClient(_store(tmp_path))
    client.handshake()
    _fails_with(client, u64(2) + strings(["/etc/passwd"]), "is not in /nix/store")


def _decode_answers(read: Callable[[int], bytes]) -> list[object]:
    """A session's answers, field by field, read as a client reads them."""

    def number() -> int:
        return struct.unpack("<Q", read(8))[0]

    def text() -> str:
        size = number()
        value = read(size).decode()
        read(-size % 8)
        return value

    fields: list[object] = [number(), number()]  # magic, version
    valid = [text() for _ in range(number())]
    fields.append(valid)
    if not valid:  # Session 1 uploads busybox: AddToStoreNar answers 1.
        fields.append(number())
    fields.append(("build", number(), text(), number(), number()))
    number(), number()  # start and stop time
    for _ in range(number()):  # realisations: nix-store sends them, we send none
        text(), text()
    path = text()
    deriver, refs = text(), [text() for _ in range(number())]
    download, size = number(), number()
    fields.append((path, deriver, refs, download, size, text(), text()))
    fields.append([text() for _ in range(number())])
    fields.append(text())
    fields.append(("nar", read(size)))
    return fields


@pytest.mark.parametrize("session", ["session1-busybox-upload", "session2-dependent"])
def test_transcript_replay(tmp_path: Path, session: str) -> None:
    """Nix's own bytes in, answers of the same structure out (times and realisations aside).

    Session 2 needs session 1's paths, so both run in order on one store.
    """
    store = _store(tmp_path)
    sessions = ["session1-busybox-upload"]
    if session != sessions[0]:
        sessions.append(session)
    for name in sessions:
        client = ServeClient(store)
        try:
            # All of it at once but the end: closing stdin during the build would cancel it.
            client.send((TRANSCRIPTS / f"{name}.in").read_bytes())
            answers = _decode_answers(client.exact)
            assert client.finish() == (0, "")
        finally:
            client.kill()
        assert client.unread == b""
        expected = io.BytesIO((TRANSCRIPTS / f"{name}.out").read_bytes())
        assert answers == _decode_answers(expected.read)
        assert expected.read() == b""


def test_a_client_resetting_its_socket_ends_the_connection_with_an_error(tmp_path: Path) -> None:
    """Closing a socket with an answer unread resets it: a hang-up, not an internal error."""
    ours, theirs = socket.socketpair()
    with ours:
        process = subprocess.Popen(
            [str(PROGRAM), "--serve", "--write", "--store", str(tmp_path / "data")],
            stdin=theirs,
            stdout=theirs,
            stderr=subprocess.PIPE,
        )
        theirs.close()
        ours.sendall(u64(CLIENT_MAGIC))
        ours.recv(16, socket.MSG_WAITALL)
        ours.sendall(u64(VERSION))
        ours.sendall(u64(1) + u64(0) + u64(0) + strings([random_path("x")]))
        # The answer has arrived and is left unread: closing now sends a reset.
        ours.recv(1, socket.MSG_PEEK)
    assert process.stderr is not None
    log = process.stderr.read().decode()
    assert process.wait(60) == 1
    assert "error: the client closed the connection" in log
    assert "Traceback" not in log


def _unread(pipe_end: int) -> int:
    """Bytes in a pipe not read yet (FIONREAD answers for either end)."""
    return struct.unpack("i", fcntl.ioctl(pipe_end, termios.FIONREAD, b"\0" * 4))[0]


def test_an_upload_finishing_after_the_path_became_valid_leaves_it_as_it_is(
    tmp_path: Path,
) -> None:
    """Two connections on one data directory: a valid path never changes under its readers."""
    store = str(tmp_path / "data")
    path = random_path("contested")
    first, second = nar(nar_file(b"first contents\n")), nar(nar_file(b"other contents\n"))
    late, early = ServeClient(store), ServeClient(store)
    try:
        late.handshake()
        early.handshake()
        late.send(
            u64(9) + string(path) + string("") + string(hashlib.sha256(second).hexdigest())
            + strings([]) + u64(0) + u64(len(second)) + u64(0) + strings([]) + string("")
            + second[:40]
        )  # fmt: skip
        # The late upload has read its command and is inside its NAR.
        wait_for(lambda: _unread(late.stdin.fileno()) == 0, "the late upload to start its NAR")
        early.add_to_store_nar(path, first)
        late.send(second[40:])
        assert late.u64() == 1
        (info,) = early.query_path_infos([path])
        assert info.nar_hash == "sha256:" + nixbase32.encode(hashlib.sha256(first).digest())
        assert early.dump(path, info.nar_size) == first
    finally:
        late.kill()
        early.kill()

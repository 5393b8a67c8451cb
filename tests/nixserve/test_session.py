"""The session class in this process, over pipes and a real embedded store: no program started."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from builder.errors import FailedPreconditionError
from builder.nixserve.building import ServeBuilds
from builder.nixserve.embedded_backend import EmbeddedBackend
from builder.nixserve.session import ServeSession
from builder.nixserve.wire import ProtocolError, WireReader, WireWriter
from tests.nixserve.serve_client import nar, nar_file, random_path, string, strings, u64


def _serve(tmp_path: Path, request: bytes) -> tuple[bytes, Exception | None]:
    """Run a session on ``request`` (then the end of input); its answers and error, if any."""
    to_session, from_client = os.pipe()
    to_client, from_session = os.pipe()
    backend = EmbeddedBackend(tmp_path / "data")
    answers = bytearray()

    def collect() -> None:
        while chunk := os.read(to_client, 65536):
            answers.extend(chunk)

    reader_thread = threading.Thread(target=collect)
    reader_thread.start()
    os.write(from_client, request)
    os.close(from_client)
    error: Exception | None = None
    try:
        session = ServeSession(
            WireReader(to_session),
            WireWriter(from_session),
            backend,
            7,
            ServeBuilds(backend, to_session, {}),
        )
        session.run()
    except (ProtocolError, OSError, ValueError) as exc:
        error = exc
    finally:
        os.close(from_session)
        reader_thread.join()
        os.close(to_session)
        os.close(to_client)
        backend.close()
    return bytes(answers), error


def test_add_then_query(tmp_path: Path) -> None:
    path = random_path("in-process")
    body = nar(nar_file(b"hello\n"))
    add = u64(9) + string(path) + string("") + string(hashlib.sha256(body).hexdigest())
    add += strings([]) + u64(0) + u64(len(body)) + u64(0) + strings([]) + string("") + body
    query = u64(1) + u64(0) + u64(0) + strings([path])
    answers, error = _serve(tmp_path, add + query)
    assert error is None
    assert answers == u64(1) + strings([path])


def test_unknown_command_ends_the_session(tmp_path: Path) -> None:
    answers, error = _serve(tmp_path, u64(77))
    assert answers == b""
    assert isinstance(error, ProtocolError)
    assert str(error) == "unknown serve command 77"


@pytest.mark.parametrize("command", [4, 6, 8, 9])
def test_writing_needs_write(tmp_path: Path, command: int) -> None:
    backend = EmbeddedBackend(tmp_path / "data")
    to_session, from_client = os.pipe()
    os.write(from_client, u64(command))
    os.close(from_client)
    unread, out = os.pipe()
    try:
        session = ServeSession(
            WireReader(to_session), WireWriter(out), backend, 7, ServeBuilds(backend, 0, {}), False
        )
        with pytest.raises(
            FailedPreconditionError, match=f"serve command {command} changes the store"
        ):
            session.run()
    finally:
        backend.close()
        for fd in (to_session, unread, out):
            os.close(fd)

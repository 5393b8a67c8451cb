"""Serving the connections ``builder-nix-serve`` relays to a running ``builder serve``.

Each connection Nix opens costs a process start; with a hand-off socket that
process only passes its descriptors here, and the session runs in a thread
of the server on the server's store and build service: one launcher, one
materialisation cache and one result cache for every connection, and no
Python start-up beyond the relay's. Nothing here forks: the server's
launcher was started before any thread.

Whoever can connect to the socket can store paths and run builds, exactly
like the gRPC unix socket; its mode comes from the umask.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import socket
import struct
import threading
from pathlib import Path

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from builder.errors import InvalidArgumentError
from builder.executor.cancel import CancelToken
from builder.executor.reporting import Caller, reported_build
from builder.executor.request import BuildRequest
from builder.executor.service import (
    BuildExecutor,
    BuildOutcome,
    BuildService,
    EventSink,
    new_build_id,
)
from builder.nixserve.connection import report_error, run_session
from builder.nixserve.handoff_relay import (
    FLAG_WRITE,
    HANDOFF_FDS,
    HANDOFF_HEADER,
    HANDOFF_MAGIC,
    HANDOFF_VERSION,
)
from builder.nixserve.handshake import check_client_version
from builder.nixserve.paths import RecordingLock
from builder.nixserve.wire import ProtocolError, WireReader, WireWriter
from builder.store.store import Store

logger = logging.getLogger(__name__)

DEFAULT_MAX_SESSIONS = 64
# A client that connects and sends no header in this time holds no session slot longer.
HEADER_TIMEOUT = 10.0
_BACKLOG = 128
_SLOT_WAIT = 0.5
_FD_SIZE = array.array("i").itemsize
# struct ucred: pid, uid, gid.
_PEER_CREDENTIALS = struct.Struct("3i")
FAMILY = "nix"


class ReportedBuilds:
    """The server's build service as one session uses it: each build is logged like a
    gRPC caller's, naming the session's peer."""

    def __init__(self, builds: BuildService, caller: Caller) -> None:
        self.blobs: BlobService = builds.blobs
        self.directories: DirectoryService = builds.directories
        self._builds = builds
        self._caller = caller

    @property
    def job_slots(self) -> int:
        return self._builds.job_slots

    @property
    def build_cores(self) -> int:
        return self._builds.build_cores

    def build(
        self,
        request: BuildRequest,
        on_event: EventSink | None = None,
        cancel: CancelToken | None = None,
    ) -> BuildOutcome:
        build_id = new_build_id()
        with reported_build(build_id, self._caller) as report:
            report.start()
            outcome = self._builds.build(request, on_event, cancel, build_id)
            report.cached = outcome.cached
            return outcome


class SharedBackend:
    """The server's own store and build service, shared by every session; closed by the server."""

    def __init__(self, store: Store, builds: BuildService, peer: str) -> None:
        self.blobs = store.blobs
        self.directories = store.directories
        self.pathinfos = store.pathinfos
        self.recording = RecordingLock(store.data_dir)
        self._builds = ReportedBuilds(builds, Caller(peer, FAMILY))

    def executor(self) -> BuildExecutor:
        return self._builds

    def close(self) -> None:
        """The store and the build service outlive every session."""


class HandoffError(Exception):
    """The hand-off message itself is wrong; the session never starts."""


def _receive_handoff(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The header and the descriptors sent with it (close-on-exec, as nothing here may inherit)."""
    data, ancillary, flags, _ = conn.recvmsg(
        HANDOFF_HEADER.size,
        socket.CMSG_SPACE(HANDOFF_FDS * _FD_SIZE),
        socket.MSG_CMSG_CLOEXEC,
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD_SIZE
            fds.extend(array.array("i", payload[:usable]))
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise HandoffError(f"more than {HANDOFF_FDS} descriptors were sent")
    return data, fds


def _check_header(data: bytes) -> tuple[int, int]:
    """The flags and the client's protocol version of a valid header."""
    if len(data) != HANDOFF_HEADER.size:
        raise HandoffError(f"hand-off header is {len(data)} bytes, expected {HANDOFF_HEADER.size}")
    magic, version, flags, client_version = HANDOFF_HEADER.unpack(data)
    if magic != HANDOFF_MAGIC:
        raise HandoffError(f"hand-off magic {magic!r}, expected {HANDOFF_MAGIC!r}")
    if version != HANDOFF_VERSION:
        raise HandoffError(
            f"hand-off version {version}, this builder speaks {HANDOFF_VERSION}: "
            "builder-nix-serve and builder serve must come from the same release"
        )
    try:
        check_client_version(client_version)
    except ProtocolError as exc:
        raise HandoffError(str(exc)) from None
    return flags, client_version


class HandoffServer:
    """A unix socket accepting relayed connections, at most ``max_sessions`` served at once.

    Connections past the bound wait in the socket's backlog until a session ends.
    """

    def __init__(
        self,
        path: Path,
        store: Store,
        builds: BuildService,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        if max_sessions < 1:
            raise InvalidArgumentError("--nix-sessions must be at least 1")
        self.path = path
        self._store = store
        self._builds = builds
        self._slots = threading.BoundedSemaphore(max_sessions)
        self._closing = threading.Event()
        self._listener = self._listen(path)
        self._acceptor = threading.Thread(target=self._accept, name="nix-handoff", daemon=True)

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                listener.bind(str(path))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not _stale(path):
                    raise
                path.unlink()
                listener.bind(str(path))
            listener.listen(_BACKLOG)
        except OSError as exc:
            listener.close()
            raise InvalidArgumentError(f"--nix-handoff {path}: {exc.strerror or exc}") from exc
        return listener

    def start(self) -> HandoffServer:
        self._acceptor.start()
        logger.info("Nix hand-off on %s", self.path, extra={"path": str(self.path)})
        return self

    def close(self) -> None:
        """Stop accepting; sessions still running end with their clients or the process."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join()
        self._listener.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> HandoffServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            # With every slot taken, look up now and then: the server may be stopping.
            while not self._slots.acquire(timeout=_SLOT_WAIT):
                if self._closing.is_set():
                    return
            try:
                conn, _ = self._listener.accept()
            except OSError:
                self._slots.release()
                if self._closing.is_set():
                    return
                logger.exception("Nix hand-off: accept failed")
                continue
            thread = threading.Thread(
                target=self._session, args=(conn,), name="nix-session", daemon=True
            )
            thread.start()

    def _session(self, conn: socket.socket) -> None:
        try:
            with conn:
                status = self._serve(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(bytes([status]))
        finally:
            self._slots.release()

    def _serve(self, conn: socket.socket) -> int:
        """One relayed connection: the session's exit status. Never raises."""
        fds: list[int] = []
        try:
            conn.settimeout(HEADER_TIMEOUT)
            data, fds = _receive_handoff(conn)
            if len(fds) != HANDOFF_FDS:
                raise HandoffError(f"{len(fds)} descriptors sent, expected {HANDOFF_FDS}")
            protocol_in, protocol_out, log_fd = fds
            try:
                flags, client_version = _check_header(data)
            except HandoffError as exc:
                report_error(log_fd, str(exc))
                raise
            for fd in (protocol_in, protocol_out):
                os.set_blocking(fd, True)
            write = bool(flags & FLAG_WRITE)
            backend = SharedBackend(self._store, self._builds, _peer(conn))
            return self._run(backend, protocol_in, protocol_out, log_fd, write, client_version)
        except (HandoffError, OSError) as exc:
            logger.warning("Nix hand-off refused: %s", exc)
            return 1
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _run(
        self,
        backend: SharedBackend,
        protocol_in: int,
        protocol_out: int,
        log_fd: int,
        write: bool,
        client_version: int,
    ) -> int:
        """The session, the relay having answered the handshake already."""
        reader, writer = WireReader(protocol_in), WireWriter(protocol_out)
        try:
            return run_session(
                reader, writer, backend, client_version, protocol_in, log_fd, os.environ,
                write,
            )  # fmt: skip
        except Exception as exc:
            # A bug in one session must not take the server, or the other sessions, down.
            logger.exception("Nix hand-off session failed")
            report_error(log_fd, f"internal error of the builder, see its log: {exc!r}")
            return 1


def _peer(conn: socket.socket) -> str:
    """How build lines name a session: the hand-off and the relaying process, as the kernel
    tells it (the relay runs as the user whose Nix offloads the build)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CREDENTIALS.size)
    pid, uid, _ = _PEER_CREDENTIALS.unpack(raw)
    return f"nix-handoff:pid:{pid}:uid:{uid}"


def _stale(path: Path) -> bool:
    """Whether ``path`` is a socket nobody listens on any more (left by a server that died)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return path.is_socket()
        except OSError:
            return False
        return False

"""Passing a serve connection to a running ``builder serve`` instead of serving it here.

With ``--store handoff+unix:///PATH`` the program only connects to the
server's hand-off socket, passes the protocol's input and output and its
stderr (the log Nix shows) in one message, and waits for the session's exit
status: the server serves the whole connection with its own store, launcher
and caches. Standard library only, as it runs before anything else is
loaded.

The program answers the handshake itself before it relays: Nix starts its
next connection only once this one is answered, so the answer must not
wait for a round trip to the server. The handshake reads exactly its bytes,
so whatever the client sends next is still in the pipe for the server.

The hand-off message is a fixed header (magic, version, flags, the client's
protocol version) with the three descriptors attached; the server answers
with one status byte when the session ends.

The socket is the interpreter's built-in ``_socket`` type, which the
``socket`` module wraps: the wrapper's import builds enums of every address
family and option, several milliseconds of a start-up that each offloaded
build pays, on a host whose cores are busy with other builds.
"""

from __future__ import annotations

import _socket
import os
import struct
import sys

HANDOFF_MAGIC = b"BNXH"
HANDOFF_VERSION = 2
# Magic, hand-off version, flags, the serve protocol version the client spoke.
HANDOFF_HEADER = struct.Struct("<4sIIQ")
FLAG_WRITE = 1
# Input, output, log.
HANDOFF_FDS = 3


def send_handoff(sock: _socket.socket, header: bytes, fds: list[int]) -> None:
    """The header and the descriptors in one message, so they cannot arrive apart."""
    rights = struct.pack(f"{len(fds)}i", *fds)
    sent = sock.sendmsg([header], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    if sent != len(header):
        raise OSError(f"sent {sent} of {len(header)} header bytes")


def relay(path: str, protocol_in: int, protocol_out: int, write: bool, client_version: int) -> int:
    """Hand the connection, handshake done, to the server at ``path``; its session's exit status."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
            flags = FLAG_WRITE if write else 0
            header = HANDOFF_HEADER.pack(HANDOFF_MAGIC, HANDOFF_VERSION, flags, client_version)
            send_handoff(sock, header, [protocol_in, protocol_out, 2])
        except OSError as exc:
            print(
                f"error: cannot reach the builder at {path}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        # Our copies are not needed while the server holds its own.
        for fd in (protocol_in, protocol_out):
            os.close(fd)
        try:
            status = sock.recv(1)
        except OSError as exc:
            status = b""
            reason = exc.strerror or str(exc)
        else:
            reason = "it closed the hand-off socket"
        if not status:
            print(
                f"error: the builder at {path} ended the session without an exit status: {reason}",
                file=sys.stderr,
            )
            return 1
        return status[0]
    finally:
        sock.close()

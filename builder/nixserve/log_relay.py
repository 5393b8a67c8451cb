"""The build log on its way to the client's stderr, never waiting on the client where it is made.

A server's sandbox launcher hands the output of every build to one reader
thread, which calls each build's log sink in turn. A sink that waited for a
client not reading its stderr (stopped, or behind a slow link) would hold up
the log and the result of every other build on the server. So a session's
log is kept here, up to a bound, and written by a thread of the session's
own; past the bound output is dropped and counted, and the client learns how
much once it reads again. A client that reads nothing at all for
``STALL_SECONDS`` is given up on: the rest of its log is dropped, so no
thread waits on it for ever.
"""

from __future__ import annotations

import os
import select
import threading
import time

PENDING_LIMIT = 4 << 20
"""Bytes held for a client that reads slower than its build writes."""
STALL_SECONDS = 60.0
"""How long a write may wait without the client taking a byte."""
FLUSH_SECONDS = 10.0
"""How long a finished build's answer waits for its log to go out first."""
_CHUNK = select.PIPE_BUF


def write_within(fd: int, data: bytes, stall: float) -> None:
    """Write all of ``data``, failing with ``TimeoutError`` once ``fd`` takes nothing for ``stall``.

    Each write is at most ``PIPE_BUF`` bytes after ``poll`` found room, which
    a pipe then takes without blocking; the descriptor's flags, shared with
    the client, stay as they are.
    """
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    view = memoryview(data)
    while view:
        deadline = time.monotonic() + stall
        while not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the client took none of its log for {stall:g} s")
        view = view[os.write(fd, view[:_CHUNK]) :]


class LogRelay:
    """One session's log writer: ``write`` returns at once, a thread of its own does the writing."""

    def __init__(self, fd: int, limit: int = PENDING_LIMIT, stall: float = STALL_SECONDS) -> None:
        # A copy of its own, closed by the writer thread when it ends: the
        # session may close ``fd`` while a stalled write still waits, and a
        # number closed under the thread could be reused by another session.
        self._fd = os.dup(fd)
        self._limit = limit
        self._stall = stall
        self._pending = bytearray()
        self._dropped = 0
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name="nix-log", daemon=True)
        self._thread.start()

    def __enter__(self) -> LogRelay:
        return self

    def __exit__(self, *_: object) -> None:
        self.close(FLUSH_SECONDS)

    def write(self, data: bytes) -> None:
        """Keep ``data`` for the client, or count it as dropped past the bound."""
        with self._changed:
            if self._closed:
                return
            room = max(0, self._limit - len(self._pending))
            self._pending += data[:room]
            self._dropped += max(0, len(data) - room)
            self._changed.notify()

    def close(self, timeout: float) -> None:
        """Take no more output, and give what is pending up to ``timeout`` to go out."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout)

    def _pump(self) -> None:
        try:
            self._write_pending()
        finally:
            os.close(self._fd)

    def _write_pending(self) -> None:
        while True:
            with self._changed:
                while not (self._pending or self._dropped or self._closed):
                    self._changed.wait()
                chunk, self._pending = bytes(self._pending), bytearray()
                dropped, self._dropped = self._dropped, 0
                last = self._closed
            if dropped:
                note = f"\n[{dropped} bytes of log dropped: the client read too slowly]\n"
                chunk += note.encode()
            try:
                write_within(self._fd, chunk, self._stall)
            except OSError:
                # The client is gone or reads nothing: nothing more goes to it.
                with self._changed:
                    self._closed = True
                    self._pending.clear()
                return
            if last:
                return

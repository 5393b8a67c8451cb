"""A session's build log: kept for a slow client up to a bound, given up on a stuck one."""

from __future__ import annotations

import fcntl
import os
import re
import time

from builder.nixserve.log_relay import LogRelay


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _full_pipe() -> tuple[int, int, bytes]:
    """A pipe whose reader (the client) has read nothing yet: its buffer is full."""
    read, write = os.pipe()
    filler = b"f" * fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
    os.write(write, filler)
    return read, write, filler


def test_output_past_the_bound_is_dropped_and_counted() -> None:
    read, write, filler = _full_pipe()
    try:
        relay = LogRelay(write, limit=10)
        sent = b"a" * 10 + b"b" * 15
        relay.write(sent[:10])
        relay.write(sent[10:])
        reader_done = False
        try:
            # The client reads again: what was kept arrives, then how much was not.
            os.set_blocking(read, False)
            received = bytearray()
            while not received.endswith(b"]\n"):
                try:
                    received += os.read(read, 1 << 16)
                except BlockingIOError:
                    time.sleep(0.01)
            reader_done = True
        finally:
            relay.close(30)
        assert reader_done
        assert received.startswith(filler)
        kept, note = bytes(received[len(filler) :]).split(b"\n[", 1)
        counted = re.match(rb"(\d+) bytes of log dropped", note)
        assert counted is not None
        dropped = int(counted.group(1))
        assert kept == sent[: len(kept)] and len(kept) + dropped == len(sent)
        assert dropped > 0
    finally:
        os.close(read)
        os.close(write)


def test_a_client_that_reads_nothing_is_given_up_on() -> None:
    read, write, _ = _full_pipe()
    try:
        relay = LogRelay(write, stall=0.2)
        relay.write(b"never read")
        started = time.monotonic()
        relay.close(30)
        # The writer gave up after its stall time rather than waiting out close's bound.
        assert time.monotonic() - started < 30
    finally:
        os.close(read)
        os.close(write)


def test_everything_reaches_a_reading_client_in_order() -> None:
    read, write = os.pipe()
    try:
        with LogRelay(write) as relay:
            for i in range(1000):
                relay.write(b"line %d\n" % i)
        os.close(write)
        write = -1
        assert _read_all(read) == b"".join(b"line %d\n" % i for i in range(1000))
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_a_stalled_write_never_lands_in_a_descriptor_reused_after_the_session() -> None:
    """The session closes its log descriptor after a bounded wait; the number may then be
    another session's, which a still-waiting write must not reach."""
    read, write, filler = _full_pipe()
    relay = LogRelay(write)
    relay.write(b"late log")
    relay.close(0.05)  # the client has read nothing: the session goes on without waiting
    os.close(write)
    other_read, other_write = os.pipe()  # lowest free numbers: likely the one just closed
    try:
        # The stalled client reads again; the late log reaches it, not the other pipe.
        assert _read_all(read) == filler + b"late log"
        os.close(other_write)
        other_write = -1
        assert _read_all(other_read) == b""
    finally:
        os.close(read)
        os.close(other_read)
        if other_write >= 0:
            os.close(other_write)

"""What one test run shares with no other run on the host.

Two test runs at once (two checkouts, say) would otherwise compete for the
same host-wide build uids and see each other's build processes. Each run
claims a slot by an exclusive ``flock`` held for its lifetime in a directory
shared by all runs, so no two live runs ever hold the same slot. The slot
gives the run its own build uid range and uid lock directory, passed to every
launcher it starts, in process or through ``builder`` commands, by the
launcher's environment variables; and a token that every process marker of the
run carries. A root run also moves to a mount namespace of its own with private
propagation, so that a mount another run makes (a small disk, say) never shows
in the mount table this run checks for leaked sandbox mounts, nor the reverse.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import tempfile

from sandbox import syscalls
from sandbox.launcher import UID_BASE_VARIABLE, UID_COUNT_VARIABLE, UID_LOCK_DIR_VARIABLE

_SLOTS_DIR = (
    "/run/sandbox-test-slots"
    if os.geteuid() == 0
    else os.path.join(tempfile.gettempdir(), f"sandbox-test-slots-{os.geteuid()}")
)
_SLOT_COUNT = 400
_SLOT_SIZE = 100_000
_FIRST_UID = 1_900_000_000
_PRIVATE_RANGES = 9
_UID_COUNT = 1024
TOKEN_VARIABLE = "SANDBOX_TEST_TOKEN"


def _claim_slot() -> tuple[int, int]:
    """The first slot no live run holds, and the descriptor that holds it for us."""
    os.makedirs(_SLOTS_DIR, mode=0o755, exist_ok=True)
    for slot in range(_SLOT_COUNT):
        fd = os.open(
            os.path.join(_SLOTS_DIR, f"slot-{slot}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd
    raise RuntimeError(f"all {_SLOT_COUNT} test run slots in {_SLOTS_DIR} are held")


def _settle() -> str:
    """Claim a slot and publish its settings, unless a parent run already did.

    A process started by the run (a server, a client script) inherits the
    environment and so belongs to the parent's slot.
    """
    token = os.environ.get(TOKEN_VARIABLE)
    if token is not None:
        return token
    slot, fd = _claim_slot()
    _HELD.append(fd)
    os.environ[UID_BASE_VARIABLE] = str(_FIRST_UID + slot * _SLOT_SIZE)
    os.environ[UID_COUNT_VARIABLE] = str(_UID_COUNT)
    os.environ[UID_LOCK_DIR_VARIABLE] = os.path.join(_SLOTS_DIR, f"uids-{slot}")
    token = f"{slot:03d}{secrets.randbelow(1000):03d}"
    os.environ[TOKEN_VARIABLE] = token
    if os.geteuid() == 0:
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    return token


_HELD: list[int] = []
#: Six digits, unique among the runs alive on the host.
TOKEN = _settle()
UID_BASE = int(os.environ[UID_BASE_VARIABLE])
UID_LOCK_DIR = os.environ[UID_LOCK_DIR_VARIABLE]


def private_uid_base(index: int) -> int:
    """The start of a uid range of this run that no launcher uses by default.

    For tests that give a launcher a small range of its own; ``index`` from 1
    to 9 picks one of the ranges, each 10,000 uids wide.
    """
    assert 1 <= index <= _PRIVATE_RANGES
    return UID_BASE + index * (_SLOT_SIZE // (_PRIVATE_RANGES + 1))


def sleep_marker(seconds: int) -> str:
    """A ``sleep`` command line that only this run's builds run: it finds them with
    :func:`tests.processes.processes_with`. The token is the fractional part."""
    return f"sleep {seconds}.{TOKEN}"

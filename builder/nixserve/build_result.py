"""What Nix sends with a build and what it expects back: settings, statuses and messages.

Statuses and the wording of messages follow Nix 2.8, whose client shows the
message to its user as if its own builder had failed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from builder.nixserve.wire import WireReader, WireWriter

TAIL_LINES = 10
# A log line kept for the failure message; longer ones are cut, as memory is bounded.
MAX_TAIL_LINE = 4096
# Client minor versions from which a field is on the wire.
KEEP_FAILED_MINOR = 7
BUILT_OUTPUTS_MINOR = 6


class BuildStatus(IntEnum):
    BUILT = 0
    SUBSTITUTED = 1
    ALREADY_VALID = 2
    PERMANENT_FAILURE = 3
    INPUT_REJECTED = 4
    OUTPUT_REJECTED = 5
    TRANSIENT_FAILURE = 6
    CACHED_FAILURE = 7
    TIMED_OUT = 8
    MISC_FAILURE = 9
    DEPENDENCY_FAILED = 10
    LOG_LIMIT_EXCEEDED = 11
    NOT_DETERMINISTIC = 12


@dataclass(frozen=True)
class BuildSettings:
    """The per-build settings the client sends; 0 means unlimited."""

    max_silent_time: int = 0
    build_timeout: int = 0
    max_log_size: int = 0
    build_repeat: int = 0
    enforce_determinism: bool = False
    keep_failed: bool = False


def read_build_settings(reader: WireReader, client_minor: int) -> BuildSettings:
    max_silent_time = reader.u64("maxSilentTime")
    build_timeout = reader.u64("buildTimeout")
    max_log_size = reader.u64("maxLogSize")
    build_repeat = reader.u64("buildRepeat")
    enforce_determinism = reader.boolean("enforceDeterminism")
    keep_failed = client_minor >= KEEP_FAILED_MINOR and reader.boolean("keepFailed")
    return BuildSettings(
        max_silent_time, build_timeout, max_log_size, build_repeat, enforce_determinism, keep_failed
    )


@dataclass(frozen=True)
class BuildResult:
    status: BuildStatus
    message: str
    start_time: int
    stop_time: int

    @property
    def succeeded(self) -> bool:
        return self.status in (BuildStatus.BUILT, BuildStatus.ALREADY_VALID)


def write_build_result(writer: WireWriter, result: BuildResult, client_minor: int) -> None:
    """One build, no repeats, deterministic as far as anyone checked; no realisations.

    Nix accepts an empty list of built outputs for input-addressed
    derivations and then queries the outputs itself.
    """
    writer.u64(result.status)
    writer.string(result.message)
    writer.u64(1)
    writer.u64(0)
    writer.u64(result.start_time)
    writer.u64(result.stop_time)
    if client_minor >= BUILT_OUTPUTS_MINOR:
        writer.u64(0)


class LogTail:
    """The last lines of a build log, for the failure message Nix prints."""

    def __init__(self, lines: int = TAIL_LINES) -> None:
        self._lines: deque[bytes] = deque(maxlen=lines)
        self._partial = bytearray()

    def add(self, data: bytes) -> None:
        *complete, rest = (bytes(self._partial) + data).split(b"\n")
        for line in complete:
            self._lines.append(line[:MAX_TAIL_LINE])
        self._partial = bytearray(rest[:MAX_TAIL_LINE])

    def lines(self) -> list[str]:
        lines = list(self._lines)
        if self._partial:
            lines = [*lines, bytes(self._partial)][-TAIL_LINES:]
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


def builder_failed_message(drv_path: str, how: str, tail: list[str]) -> str:
    """``builder for '<drv>' failed with exit code N`` and the log's last lines, as Nix words it."""
    message = f"builder for '{drv_path}' {how}"
    if tail:
        message += f";\nlast {len(tail)} log lines:\n" + "\n".join(f"> {line}" for line in tail)
    return message

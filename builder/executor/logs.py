"""Logs of running and recently finished builds, for clients that ask later.

Logs are kept in memory, bounded per build by the log limit the sandbox
enforces anyway, and dropped a configurable time after the build finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from builder.errors import NotFoundError


@dataclass
class BuildLog:
    chunks: list[bytes] = field(default_factory=list)
    finished_at: float | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    def append(self, data: bytes) -> None:
        with self.changed:
            self.chunks.append(data)
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.finished_at = time.monotonic()
            self.changed.notify_all()

    def follow(self, stop: Callable[[], bool] = lambda: False) -> Iterator[bytes]:
        """Every chunk so far, then new ones as they come, until the build ends."""
        index = 0
        while True:
            with self.changed:
                while index == len(self.chunks) and self.finished_at is None and not stop():
                    self.changed.wait(0.2)
                pending = self.chunks[index:]
                finished = self.finished_at is not None
            yield from pending
            index += len(pending)
            if (finished and index == len(self.chunks)) or stop():
                return


class LogStore:
    def __init__(self, retention_seconds: float) -> None:
        self._retention = retention_seconds
        self._logs: dict[str, BuildLog] = {}
        self._lock = threading.Lock()

    def open(self, build_id: str) -> BuildLog:
        self._expire()
        log = BuildLog()
        with self._lock:
            self._logs[build_id] = log
        return log

    def get(self, build_id: str) -> BuildLog:
        self._expire()
        with self._lock:
            log = self._logs.get(build_id)
        if log is None:
            raise NotFoundError(f"no log kept for build {build_id!r}")
        return log

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._retention
        with self._lock:
            for build_id in [
                b
                for b, log in self._logs.items()
                if log.finished_at is not None and log.finished_at < cutoff
            ]:
                del self._logs[build_id]

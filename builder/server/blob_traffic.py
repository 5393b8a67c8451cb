"""Blob bytes that crossed a server's castore services, counted as they pass.

The servicers count into it and whoever reports on the server (its metrics)
reads it; a servicer that nobody reports on still counts, which costs one
lock per message and spares every servicer a branch.
"""

from __future__ import annotations

import threading


class BlobTraffic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._sent = 0
        self._stored = 0

    def received(self, size: int) -> None:
        """Blob bytes arrived from a client, whether or not their upload completes."""
        with self._lock:
            self._received += size

    def sent(self, size: int) -> None:
        with self._lock:
            self._sent += size

    def stored(self, count: int) -> None:
        """Blob uploads that completed (a blob already present counts again)."""
        with self._lock:
            self._stored += count

    @property
    def received_bytes(self) -> int:
        return self._received

    @property
    def sent_bytes(self) -> int:
        return self._sent

    @property
    def blobs_stored(self) -> int:
        return self._stored

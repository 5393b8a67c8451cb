"""Collection in the background of a server, every interval.

A server collects on a timer rather than after each put: knowing whether a
put took the store over its bound would mean keeping its size up to date
across every process that writes to it, whereas a collection lists the store
anyway. So the store can exceed its bound by what is written in one interval
(and by what is younger than the minimum age). A collection that fails is
logged and the next one runs on time.
"""

from __future__ import annotations

import logging
import threading

from builder.gc.collector import Collector

logger = logging.getLogger(__name__)


class PeriodicCollection:
    def __init__(
        self, collector: Collector, interval: float, max_bytes: int | None, min_age: float
    ) -> None:
        self._collector = collector
        self._interval = interval
        self._max_bytes = max_bytes
        self._min_age = min_age
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="garbage-collection", daemon=True)

    def __enter__(self) -> PeriodicCollection:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the timer and wait for a collection under way, which ends at its next batch."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._collector.collect(self._max_bytes, self._min_age, self._stop.is_set)
            except Exception:
                logger.exception("garbage collection failed", extra={"interval": self._interval})

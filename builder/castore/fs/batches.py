"""Handing the files of a directory walk to a thread pool, by directory descriptor.

A walk (``descent``) closes each directory's descriptor when it moves on,
but the files it found there are read or written later, on pool threads, in
batches that keep per-task overhead below per-file cost. Each batch
therefore holds a duplicate of the descriptor of every directory its files
are in, closed when the batch is done; both the directories per batch and the
batches not yet collected are bounded, so descriptors stay bounded whatever
the tree's shape.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

BATCH_FILES = 64
BATCH_DIRECTORIES = 8


@dataclass
class _Batch(Generic[Item]):
    items: list[tuple[int, Item]] = field(default_factory=list)
    directory_fds: dict[int, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.directory_fds.values():
            os.close(fd)
        self.directory_fds.clear()


class DirectoryBatches(Generic[Item, Result]):
    """Runs ``work(dir_fd, item)`` on a pool for every item added, passing each result on.

    ``collect`` receives the results of one batch at a time, in the order the
    batches were made, on the thread that adds items.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        workers: int,
        work: Callable[[int, Item], Result],
        collect: Callable[[list[Result]], None],
    ) -> None:
        self._pool = pool
        self._work = work
        self._collect_results = collect
        self._limit = 2 * workers
        self._batch: _Batch[Item] = _Batch()
        self._in_flight: deque[tuple[Future[list[Result]], _Batch[Item]]] = deque()

    def add(self, directory: int, dir_fd: int, item: Item) -> None:
        """Queue ``item`` of the directory numbered ``directory``, open now as ``dir_fd``."""
        batch = self._batch
        if directory not in batch.directory_fds:
            if len(batch.directory_fds) >= BATCH_DIRECTORIES:
                self._flush()
                batch = self._batch
            batch.directory_fds[directory] = os.dup(dir_fd)
        batch.items.append((directory, item))
        if len(batch.items) >= BATCH_FILES:
            self._flush()

    def finish(self) -> None:
        """Run what is queued and wait for every result."""
        self._flush()
        while self._in_flight:
            self._collect()

    def abandon(self) -> None:
        """Cancel batches not started, wait for those running, and close every descriptor."""
        for future, _ in self._in_flight:
            future.cancel()
        wait([future for future, _ in self._in_flight])
        self._batch.close()
        for _, batch in self._in_flight:
            batch.close()
        self._in_flight.clear()

    def _flush(self) -> None:
        batch, self._batch = self._batch, _Batch()
        if not batch.items:
            batch.close()
            return
        while len(self._in_flight) >= self._limit:
            self._collect()
        self._in_flight.append((self._pool.submit(self._run, batch), batch))

    def _collect(self) -> None:
        results = self._in_flight[0][0].result()
        self._in_flight.popleft()
        self._collect_results(results)

    def _run(self, batch: _Batch[Item]) -> list[Result]:
        try:
            return [self._work(batch.directory_fds[d], item) for d, item in batch.items]
        finally:
            batch.close()

"""One embedded SQLite database shared by threads and processes, as every SQLite store uses it.

Each read or write borrows a connection that no other thread uses meanwhile
(SQLite connections are not shareable across threads without serialising
every read) and gives it back to a small pool of idle ones. Connections are
not tied to threads: a server runs each Nix hand-off session, and each
streamed build, on a thread of its own, and a connection per thread would
stay open after the thread ended, two descriptors per connection Nix made,
until the process ran out of them. WAL mode lets readers proceed while
another thread or process commits, and the busy timeout makes writers from
several processes queue instead of failing. ``synchronous=FULL`` flushes
the log at every commit, so what a store reports as written survives a power
loss (NORMAL in WAL mode may lose the last commits). A full disk rolls the
transaction back and is reported as the database being out of space.

``:memory:`` is one shared-cache database for the instance, kept alive by a
connection held open outside the pool. Its table locks fail at once instead
of waiting, so its statements are serialised.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from builder.errors import ResourceExhaustedError

BUSY_TIMEOUT_SECONDS = 30
# Idle connections kept for the next borrower; past this many busy at once,
# the extra ones are closed after use.
MAX_IDLE_CONNECTIONS = 8
_WAL_RETRY_SECONDS = 0.01
_memory_databases = itertools.count()


class SqliteDatabase:
    def __init__(self, path: str | Path, schema: str, what: str) -> None:
        """``schema`` is one or more statements; ``what`` names the database in errors."""
        self.path = str(path)
        self._what = what
        self._serial: AbstractContextManager[object] = nullcontext()
        self._keeper: sqlite3.Connection | None = None
        if self.path == ":memory:":
            self.path = f"file:memory-{next(_memory_databases)}-{id(self)}?mode=memory&cache=shared"
            self._serial = threading.Lock()
            self._keeper = self._connect()
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._borrowed() as conn, conn:
            conn.executescript(schema)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            uri=self.path.startswith("file:"),
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_SECONDS,
        )
        try:
            _use_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        """A connection for this block alone: an idle one, or a new one when all are in use."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._lock:
                kept = not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS
                if kept:
                    self._idle.append(conn)
            if not kept:
                conn.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._serial, self._borrowed() as conn:
            yield conn

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A transaction, committed when the block ends and rolled back if it raises."""
        try:
            with self._serial, self._borrowed() as conn, conn:
                yield conn
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise ResourceExhaustedError(
                f"{self._what} {self.path} is out of space: {exc}"
            ) from exc

    def rows_in_pages(self, query: str, page: int) -> Iterator[tuple[Any, ...]]:
        """Every row of ``query``, ``page`` at a time, each page a read of its own.

        A slow consumer (a collector walking the store) then holds no read
        transaction between pages, and a row written meanwhile past the page
        read last is still listed. ``query`` selects the key first (a BLOB,
        as every store's keys are digests), takes the key to start after and
        the page size as its two parameters, and orders by the key.
        """
        after: object = b""
        while True:
            with self.reading() as conn:
                rows = conn.execute(query, (after, page)).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def ensure_column(self, table: str, column: str, definition: str, fill: object) -> None:
        """Add ``column`` to a database made before it existed, setting ``fill`` in every row.

        Checked again and added in one write transaction, so that processes
        opening the same old database at once add it once; a database that has
        it costs one read.
        """
        with self._serial, self._borrowed() as conn:
            if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                    conn.execute(f"UPDATE {table} SET {column} = ?", (fill,))
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def close(self) -> None:
        """Close the idle connections; one still borrowed is closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._keeper is not None:
            self._keeper.close()


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database's journal to WAL, waiting as a writer would if another holds it.

    The switch needs the database to itself, and SQLite refuses it at once,
    without the busy timeout, while another connection is in a write
    transaction: two processes opening a new store together (Nix starting
    two connections on a fresh data directory) hit that. WAL is kept in the
    file, so only a database nobody has switched yet ever waits here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(_WAL_RETRY_SECONDS)

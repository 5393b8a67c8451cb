"""One embedded SQLite database shared by threads and processes, as every SQLite store uses it.

Each thread gets its own connection (SQLite connections are not shareable
across threads without serialising every read); WAL mode lets readers proceed
while another thread or process commits, and the busy timeout makes writers
from several processes queue instead of failing. ``synchronous=FULL`` flushes
the log at every commit, so what a store reports as written survives a power
loss (NORMAL in WAL mode may lose the last commits). A full disk rolls the
transaction back and is reported as the database being out of space.

``:memory:`` is one shared-cache database for the instance, kept alive by a
connection held open. Its table locks fail at once instead of waiting, so
its statements are serialised.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from builder.errors import ResourceExhaustedError

BUSY_TIMEOUT_SECONDS = 30
_memory_databases = itertools.count()


class SqliteDatabase:
    def __init__(self, path: str | Path, schema: str, what: str) -> None:
        """``schema`` is one or more statements; ``what`` names the database in errors."""
        self.path = str(path)
        self._what = what
        self._serial: AbstractContextManager[object] = nullcontext()
        if self.path == ":memory:":
            self.path = f"file:memory-{next(_memory_databases)}-{id(self)}?mode=memory&cache=shared"
            self._serial = threading.Lock()
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        keeper = self._connection()
        with keeper:
            keeper.executescript(schema)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                uri=self.path.startswith("file:"),
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_SECONDS,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._serial:
            yield self._connection()

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A transaction, committed when the block ends and rolled back if it raises."""
        conn = self._connection()
        try:
            with self._serial, conn:
                yield conn
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise ResourceExhaustedError(
                f"{self._what} {self.path} is out of space: {exc}"
            ) from exc

    def ensure_column(self, table: str, column: str, definition: str, fill: object) -> None:
        """Add ``column`` to a database made before it existed, setting ``fill`` in every row.

        Checked again and added in one write transaction, so that processes
        opening the same old database at once add it once; a database that has
        it costs one read.
        """
        conn = self._connection()
        with self._serial:
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
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

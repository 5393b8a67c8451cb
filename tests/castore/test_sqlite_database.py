"""The embedded database's connections: borrowed per block of statements, not one per thread."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from builder.castore import sqlite_database
from builder.castore.sqlite_database import MAX_IDLE_CONNECTIONS, SqliteDatabase

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("where", ["file", "memory"])
def test_threads_that_come_and_go_leave_no_connections_behind(where: str, tmp_path: Path) -> None:
    """A server runs a thread per Nix session; each one's reads must not keep descriptors open."""
    db = SqliteDatabase(tmp_path / "db.sqlite" if where == "file" else ":memory:", SCHEMA, "test")
    try:
        with db.writing() as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (1, 'one')")
        before = _open_descriptors()
        seen: list[str] = []

        def session() -> None:
            with db.reading() as conn:
                seen.append(conn.execute("SELECT v FROM t WHERE k = 1").fetchone()[0])
            with db.writing() as conn:
                conn.execute("UPDATE t SET v = 'one' WHERE k = 1")

        for _ in range(100):
            thread = threading.Thread(target=session)
            thread.start()
            thread.join()
        assert seen == ["one"] * 100
        # A connection to a file holds its database and its log open: a few
        # descriptors, at most for the idle connections kept.
        assert _open_descriptors() - before <= 3 * MAX_IDLE_CONNECTIONS
    finally:
        db.close()


def test_concurrent_borrowers_each_get_their_own_connection(tmp_path: Path) -> None:
    """More threads than idle connections at once: each holds a connection of its own meanwhile."""
    db = SqliteDatabase(tmp_path / "db.sqlite", SCHEMA, "test")
    inside = threading.Barrier(MAX_IDLE_CONNECTIONS + 2)
    held: list[int] = []
    lock = threading.Lock()

    def reader() -> None:
        with db.reading() as conn:
            with lock:
                held.append(id(conn))
            inside.wait(timeout=30)

    threads = [threading.Thread(target=reader) for _ in range(MAX_IDLE_CONNECTIONS + 2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(set(held)) == MAX_IDLE_CONNECTIONS + 2
        with db.reading() as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        db.close()


def test_a_write_that_fails_is_rolled_back_and_the_connection_reused_clean(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "db.sqlite", SCHEMA, "test")
    try:
        with pytest.raises(RuntimeError), db.writing() as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (2, 'two')")
            raise RuntimeError("the block failed")
        with db.writing() as conn:
            conn.execute("INSERT INTO t (k, v) VALUES (3, 'three')")
        with db.reading() as conn:
            assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [(3,)]
    finally:
        db.close()


def test_a_new_database_waits_for_another_writer_before_switching_to_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process in a write transaction on a database still in rollback mode makes
    SQLite refuse the switch to WAL at once; opening must wait for it instead of failing."""
    path = tmp_path / "new.sqlite"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE earlier (x)")
    other.execute("BEGIN IMMEDIATE")
    refused = threading.Event()
    real_sleep = time.sleep

    def noting_sleep(seconds: float) -> None:
        refused.set()
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_database.time, "sleep", noting_sleep)
    opened: list[SqliteDatabase] = []
    failed: list[BaseException] = []

    def open_database() -> None:
        try:
            opened.append(SqliteDatabase(path, "CREATE TABLE IF NOT EXISTS t (x)", "test"))
        except BaseException as exc:
            failed.append(exc)
        finally:
            refused.set()

    opener = threading.Thread(target=open_database)
    opener.start()
    refused.wait()
    # Refused once (or failed outright, as before); the other writer ends.
    other.execute("ROLLBACK")
    opener.join()
    other.close()
    assert failed == []
    (database,) = opened
    with database.reading() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    database.close()


def test_rows_in_pages_lists_every_row_by_key_reading_each_page_anew(tmp_path: Path) -> None:
    """A collector walks a store page by page; rows written during the walk are not missed."""
    db = SqliteDatabase(
        tmp_path / "db.sqlite",
        "CREATE TABLE IF NOT EXISTS b (k BLOB PRIMARY KEY, v INTEGER)",
        "test",
    )
    try:
        with db.writing() as conn:
            conn.executemany(
                "INSERT INTO b (k, v) VALUES (?, ?)", [(bytes([i]), i) for i in range(7)]
            )
        rows = db.rows_in_pages("SELECT k, v FROM b WHERE k > ? ORDER BY k LIMIT ?", 3)
        seen = [next(rows)]
        # Later pages are new reads, which see a row written after the first page.
        with db.writing() as conn:
            conn.execute("INSERT INTO b (k, v) VALUES (?, ?)", (bytes([200]), 200))
        seen += list(rows)
        assert seen == [(bytes([i]), i) for i in range(7)] + [(bytes([200]), 200)]
        assert (
            list(db.rows_in_pages("SELECT k, v FROM b WHERE k > ? ORDER BY k LIMIT ?", 4)) == seen
        )
    finally:
        db.close()

"""Explicit roots an operator sets: pinned digests are kept and never evicted.

Pins live in a SQLite database in the data directory (``pins.sqlite``), so the
``builder gc pin`` command and a running server share them. A pinned digest
keeps the blob and the directory closure stored under it, whichever it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from builder.castore.digest import Digest
from builder.castore.sqlite_database import SqliteDatabase
from builder.errors import InvalidArgumentError

PINS_FILE = "pins.sqlite"
MAX_NAME_LENGTH = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (
    digest BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    pinned_at REAL NOT NULL
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class Pin:
    digest: Digest
    name: str
    pinned_at: float


class Pins:
    def __init__(self, path: str | Path) -> None:
        self._db = SqliteDatabase(path, _SCHEMA, "pin database")

    def pin(self, digest: Digest, name: str = "") -> None:
        """Pin ``digest`` (again, under a new name if one is given)."""
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgumentError(
                f"--name: {len(name)} characters, more than the limit of {MAX_NAME_LENGTH}"
            )
        with self._db.writing() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO pins (digest, name, pinned_at) VALUES (?, ?, ?)",
                (bytes(digest), name, time.time()),
            )

    def unpin(self, digest: Digest) -> bool:
        """Whether ``digest`` was pinned."""
        with self._db.writing() as conn:
            return conn.execute("DELETE FROM pins WHERE digest = ?", (bytes(digest),)).rowcount > 0

    def pins(self) -> list[Pin]:
        """Every pin, by name then digest; an operator's list, small enough to hold."""
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT digest, name, pinned_at FROM pins ORDER BY name, digest"
            ).fetchall()
        return [Pin(Digest(digest), name, pinned_at) for digest, name, pinned_at in rows]

    def close(self) -> None:
        self._db.close()

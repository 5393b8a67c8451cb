"""What host files were imported as, so that an unchanged file is neither read nor hashed again.

An entry maps a file's identity and change stamps, as ``lstat`` reports them
(device, inode, size, mtime_ns, ctime_ns), to the digest its bytes had. An
import asks the record before opening a file: when every stamp still matches
and the blob store still holds the digest (a blob may have been collected
since), the file is taken as that digest without being read. Any change to a
file's contents moves its ctime, which no caller can set; a rewrite moves
mtime too, a resize its size, a replacement its inode, and a chmod its ctime,
so each of them misses and the file is hashed again. Whether a file is
executable is taken from the fresh ``lstat``, never from the entry.

The one change stamps cannot show is a change within the same timestamp tick
as the stamps the entry holds: on a filesystem with one-second timestamps, a
file rewritten in the second it was imported keeps the same stamps. Git calls
such entries "racy" and does not trust them; nor does this record: an entry
is written only if the file's mtime and ctime are strictly older than the
moment the import started reading the file, by more than ``RACY_WINDOW_NS``;
otherwise nothing is recorded and the next import hashes the file again
(recording it then, once its stamps are old enough). The margin is what makes
the rule sound for a clock reading taken in the importing process rather than
from the filesystem: the kernel stamps files from a coarse clock, which lags
the one ``time.time_ns`` reads by up to a scheduler tick, and a filesystem
truncates stamps to its granularity (one second for ext4 with small inodes,
two for FAT). So any change made after the moment the file was read stamps
the file no earlier than that moment minus the margin, which is later than
any stamp a recorded entry holds: the change always shows. What the rule
cannot cover, as for git, is a clock stepped backwards by more than the margin
after an entry was written, or a network filesystem whose server clock runs
behind this host's by more than the margin.

Nor can any stamp-based record see changes that move no stamp. A process
writing through a shared writable mapping stamps the file only at its first
write after each writeback (on tmpfs, which never writes back, only at its
first write), so a file a running program keeps mapped and writing is only
read afresh once its stamps move.
And a filesystem whose stamps come from an image rather than from this
kernel (squashfs, ISO 9660, or images built with fixed times, as
reproducible image builders do) can be swapped for another image mounted on
the same device: a file of the same inode number, size and stamps then
matches the old file's entry. ``prune(0)`` (or deleting the database)
forgets every entry after such a swap.

A hit skips the re-hash of the stored copy that putting the same bytes again
would do, so a stored blob that rotted is not repaired by re-importing its
unchanged file; reads of it still fail its digest check, and a file the record
no longer knows puts the genuine bytes back.

Entries are keyed by (device, inode), so a file rewritten in place replaces
its own entry and the record holds at most one entry per file imported. Each
entry also says when an import last used it (refreshed at most once a day, so
a re-import of an unchanged tree usually writes nothing); entries unused for
``MAX_UNUSED_SECONDS`` are deleted whenever an import writes to the record,
through an index on that time. So the record stays bounded by the files
imported within that span, and ``prune`` drops more on demand; deleting the
database is always safe, since it only saves work.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from builder.castore.blobs.service import BlobService
from builder.castore.collection import presence_vouched
from builder.castore.digest import Digest
from builder.castore.sqlite_database import SqliteDatabase

RACY_WINDOW_NS = 3_000_000_000
"""Stamps this close to the moment a file was read are not trusted (coarsest common tick: 2 s)."""

MAX_UNUSED_SECONDS = 30 * 24 * 3600
"""Entries no import has used for this long are deleted."""

_USE_REFRESH_SECONDS = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS imported_files (
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    digest BLOB NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (device, inode)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS imported_files_by_use ON imported_files (used);
"""

_LOOKUP_BATCH = 500
_SIGN_BIT = 1 << 63


def _signed(value: int) -> int:
    """An unsigned 64-bit inode or device number as the signed integer SQLite stores."""
    return value - (1 << 64) if value >= _SIGN_BIT else value


class ImportRecord:
    """The record kept in one SQLite database; each import uses it through ``begin``."""

    def __init__(self, path: str | Path) -> None:
        self._db = SqliteDatabase(path, _SCHEMA, "import record")
        self._lock = threading.Lock()
        self.hits = 0
        """Files found unchanged (and their blobs present) since the record was opened."""

    def begin(self, blobs: BlobService) -> RecordedImport:
        """The record's part in one import into ``blobs``."""
        return RecordedImport(self, blobs)

    def lookup(self, statuses: Sequence[os.stat_result]) -> list[tuple[Digest, int] | None]:
        """For each file, the digest recorded if its stamps all match, and when it was last used.

        The files of one directory are looked up together, a few hundred
        inodes per query, which costs far less than a query per file.
        """
        rows: dict[tuple[int, int], tuple[int, int, int, bytes, int]] = {}
        by_device: dict[int, list[int]] = {}
        for status in statuses:
            by_device.setdefault(_signed(status.st_dev), []).append(_signed(status.st_ino))
        with self._db.reading() as conn:
            for device, inodes in by_device.items():
                for start in range(0, len(inodes), _LOOKUP_BATCH):
                    chunk = inodes[start : start + _LOOKUP_BATCH]
                    marks = ",".join("?" * len(chunk))
                    for inode, size, mtime_ns, ctime_ns, digest, used in conn.execute(
                        "SELECT inode, size, mtime_ns, ctime_ns, digest, used FROM imported_files"
                        f" WHERE device = ? AND inode IN ({marks})",
                        (device, *chunk),
                    ):
                        rows[device, inode] = (size, mtime_ns, ctime_ns, digest, used)
        found: list[tuple[Digest, int] | None] = []
        for status in statuses:
            row = rows.get((_signed(status.st_dev), _signed(status.st_ino)))
            if row is None or row[:3] != (
                status.st_size,
                status.st_mtime_ns,
                status.st_ctime_ns,
            ):
                found.append(None)
            else:
                found.append((Digest(row[3]), row[4]))
        return found

    def write(
        self, entries: list[tuple[os.stat_result, Digest]], used: list[os.stat_result]
    ) -> None:
        """Record ``entries``, mark ``used`` as used now, and drop long-unused entries."""
        now = int(time.time())
        with self._db.writing() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO imported_files"
                " (device, inode, size, mtime_ns, ctime_ns, digest, used)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        _signed(s.st_dev),
                        _signed(s.st_ino),
                        s.st_size,
                        s.st_mtime_ns,
                        s.st_ctime_ns,
                        bytes(digest),
                        now,
                    )
                    for s, digest in entries
                ],
            )
            conn.executemany(
                "UPDATE imported_files SET used = ? WHERE device = ? AND inode = ?",
                [(now, _signed(s.st_dev), _signed(s.st_ino)) for s in used],
            )
            conn.execute("DELETE FROM imported_files WHERE used < ?", (now - MAX_UNUSED_SECONDS,))

    def prune(self, unused_seconds: float) -> int:
        """Delete entries no import has used in the last ``unused_seconds``; how many there were.

        ``prune(0)`` empties the record.
        """
        cutoff = int(time.time() - unused_seconds)
        with self._db.writing() as conn:
            return conn.execute("DELETE FROM imported_files WHERE used <= ?", (cutoff,)).rowcount

    def count_hits(self, hits: int) -> None:
        """Add an import's hits to ``hits``; imports may run on several threads."""
        with self._lock:
            self.hits += hits

    def close(self) -> None:
        self._db.close()


class RecordedImport:
    """One import's use of the record: lookups now, new entries written once the blobs are stored.

    ``known`` may be called from any thread, ``hashed`` too; ``commit`` must
    come only after every blob the import stored is durable and visible, since
    an entry that outlived a failed import would name a blob never stored
    (which the presence check would catch, at the price of a useless entry).
    """

    def __init__(self, record: ImportRecord, blobs: BlobService) -> None:
        self._record = record
        self._present = presence_vouched(blobs)
        self._lock = threading.Lock()
        self._entries: list[tuple[os.stat_result, Digest]] = []
        self._used: list[os.stat_result] = []
        self._hits = 0
        self._stale_use = int(time.time()) - _USE_REFRESH_SECONDS

    def known(self, statuses: Sequence[os.stat_result]) -> list[Digest | None]:
        """For each file ``lstat`` described, its digest if recorded unchanged and still stored."""
        known: list[Digest | None] = []
        hits = 0
        used = []
        for status, found in zip(statuses, self._record.lookup(statuses), strict=True):
            if found is None or not self._present(found[0]):
                known.append(None)
                continue
            known.append(found[0])
            hits += 1
            if found[1] < self._stale_use:
                used.append(status)
        with self._lock:
            self._hits += hits
            self._used.extend(used)
        return known

    def hashed(self, status: os.stat_result, started_ns: int, digest: Digest) -> None:
        """Note that the file ``status`` (``fstat`` of the descriptor read) hashes to ``digest``.

        ``started_ns`` is ``time.time_ns()`` taken before the file was opened.
        A file whose stamps are not older than that by the racy window is left
        unrecorded, to be hashed again next time.
        """
        if max(status.st_mtime_ns, status.st_ctime_ns) >= started_ns - RACY_WINDOW_NS:
            return
        with self._lock:
            self._entries.append((status, digest))

    def commit(self) -> None:
        """Write what this import learnt; call once, after its blobs are stored."""
        with self._lock:
            entries, self._entries = self._entries, []
            used, self._used = self._used, []
            hits, self._hits = self._hits, 0
        if entries or used:
            self._record.write(entries, used)
        self._record.count_hits(hits)

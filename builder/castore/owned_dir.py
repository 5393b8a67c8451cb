"""A per-process directory for temporary work, and the sweep of those left by dead processes.

Uploads in progress and build work trees must not outlive the process that
made them, yet a process killed with SIGKILL cleans nothing up. So each
process keeps such entries in a directory of its own under a shared parent and
holds an exclusive ``flock`` on that directory for as long as it lives: the
kernel drops the lock when the process dies, however it dies. A sweeper that
can take the lock of a directory therefore knows its owner is gone and removes
it; one it cannot lock belongs to a live process (possibly another server on
the same data directory) and is left alone. No clock, pid or timeout decides
whether an owner is alive. The locked descriptor is close-on-exec, so the
processes an owner spawns (the sandbox launcher execs its fork server) do not
keep the lock, and with it the owner, alive after its death.

Entries a live process leaked itself (a removal that failed, say) are swept by
age instead: those of its own entries not in use and not modified for
``max_age`` seconds go at the next sweep, which runs at start and then at most
every ``max_age / 4`` seconds when an entry is created.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from builder.castore.fs.descent import DIRECTORY_FLAGS
from builder.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

Remove = Callable[[Path], None]
"""Removes one entry (or a dead owner's whole directory) without following symlinks."""

OWNER_PREFIX = "owner-"
DEFAULT_MAX_AGE = 3600.0


class OwnedDirectory:
    """This process's directory under ``parent``, locked while it is open.

    ``remove`` takes the path of a dead owner's directory or of one of this
    owner's stale entries and removes it; the owner passes the removal that
    fits what it keeps there.
    """

    def __init__(self, parent: Path, remove: Remove, max_age: float = DEFAULT_MAX_AGE) -> None:
        if max_age <= 0:
            raise InvalidArgumentError(f"max_age must be positive, got {max_age}")
        self.parent = parent
        self._remove = remove
        self._max_age = max_age
        self._lock = threading.Lock()
        self._in_use: set[str] = set()
        parent.mkdir(parents=True, exist_ok=True)
        self.path, self._fd = self._claim()
        self._next_sweep = 0.0
        self.sweep()

    def _claim(self) -> tuple[Path, int]:
        """Create and lock a new directory of our own.

        A sweeper may take the lock of the new directory before we do and
        remove it; after locking we therefore check that the name still
        denotes the directory we hold, and start over if not.
        """
        while True:
            path = self.parent / f"{OWNER_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            try:
                fd = os.open(path, DIRECTORY_FLAGS)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                still = os.lstat(path)
            except FileNotFoundError:
                os.close(fd)
                continue
            held = os.fstat(fd)
            if (still.st_dev, still.st_ino) == (held.st_dev, held.st_ino):
                return path, fd
            os.close(fd)

    def claim(self, name: str) -> Path:
        """Mark an entry as in use (the age sweep skips it) and return its path."""
        with self._lock:
            self._in_use.add(name)
        self.sweep_if_due()
        return self.path / name

    def release(self, name: str) -> None:
        with self._lock:
            self._in_use.discard(name)

    def sweep_if_due(self) -> None:
        if time.monotonic() >= self._next_sweep:
            self.sweep()

    def sweep(self) -> None:
        """Remove the directories of dead owners and our own stale entries."""
        self._next_sweep = time.monotonic() + self._max_age / 4
        with os.scandir(self.parent) as entries:
            others = [e.name for e in entries if e.name != self.path.name]
        for name in others:
            self._sweep_owner(name)
        cutoff = time.time() - self._max_age
        with os.scandir(self.path) as entries:
            names = [e.name for e in entries]
        for name in names:
            with self._lock:
                if name in self._in_use:
                    continue
            try:
                modified = os.lstat(self.path / name).st_mtime
            except FileNotFoundError:
                continue
            if modified < cutoff:
                logger.info("removing stale %s", self.path / name)
                self._removed(self.path / name)

    def _sweep_owner(self, name: str) -> None:
        path = self.parent / name
        try:
            fd = os.open(path, DIRECTORY_FLAGS)
        except FileNotFoundError:
            return
        except OSError:
            # Not a directory (or a symlink): nothing an owner made; unlink the name.
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    os.unlink(path)
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            logger.info("removing %s left by a process that is gone", path)
            self._removed(path)
        finally:
            os.close(fd)

    def _removed(self, path: Path) -> None:
        """Remove an entry; one that cannot be removed is reported and left for an operator.

        A sweep runs when a build or an upload starts, so no failure to remove
        what an earlier one left (a tree its build kept changing, say) may
        fail the new one.
        """
        try:
            self._remove(path)
        except OSError as exc:
            logger.warning("could not remove %s: %s", path, exc)
        except Exception:
            logger.exception("removing %s failed", path)

    def close(self) -> None:
        """Remove our directory (whatever is left in it) and drop the lock."""
        if self._fd < 0:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                self._remove(self.path)
        finally:
            os.close(self._fd)
            self._fd = -1


def remove_flat(path: Path) -> None:
    """Remove a file, or a directory holding only files, never following a symlink.

    That is all an upload directory ever holds; anything deeper is not ours
    and is left for an operator rather than walked.
    """
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    fd = os.open(path, DIRECTORY_FLAGS)
    try:
        for name in os.listdir(fd):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)

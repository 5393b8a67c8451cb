"""Removing what a build wrote, whatever shape and permissions it left behind.

The build chose the tree: its depth (deeper than any recursion or path
limit), its modes (0o000 or 0o500 directories) and its symlinks (which may
point anywhere on the host). So removal walks by directory descriptors
(``builder.castore.fs.descent``) and fixes modes relative to the parent's
descriptor without following symlinks; nothing outside the tree is ever
read, changed or removed.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from builder.castore.fs.descent import walk

logger = logging.getLogger(__name__)

# What the owner needs on a directory to list it and unlink in it.
_OWNER_ALL = stat.S_IRWXU


def remove_tree(path: str | bytes | Path) -> list[int]:
    """Remove the file, symlink or directory tree at ``path`` (nothing there is fine);
    the inodes of the regular files the tree held.

    The inodes come from the directory listings (no stat per file), for
    callers that track hardlinked files by inode.
    """
    root = os.fsencode(path)
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(mode):
        os.unlink(root)
        return []
    if mode & _OWNER_ALL != _OWNER_ALL:
        os.chmod(root, mode | _OWNER_ALL, follow_symlinks=False)
    inodes: list[int] = []

    def empty(fd: int, _: None) -> list[tuple[bytes, None]]:
        subdirectories = []
        with os.scandir(fd) as entries:
            listed = list(entries)
        for entry in listed:
            name = os.fsencode(entry.name)
            if entry.is_dir(follow_symlinks=False):
                child_mode = entry.stat(follow_symlinks=False).st_mode
                if child_mode & _OWNER_ALL != _OWNER_ALL:
                    os.chmod(name, child_mode | _OWNER_ALL, dir_fd=fd, follow_symlinks=False)
                subdirectories.append((name, None))
            else:
                if entry.is_file(follow_symlinks=False):
                    inodes.append(entry.inode())
                os.unlink(name, dir_fd=fd)
        return subdirectories

    def remove_emptied(parent: int, name: bytes, _: None) -> None:
        os.rmdir(name, dir_fd=parent)

    walk(root, None, empty, remove_emptied)
    os.rmdir(root)
    return inodes


_Removal = tuple[Path, Callable[[], None]]
"""A tree to remove, and what to run once it is gone."""


class DeferredRemoval:
    """Trees removed on a thread of their own, after the build that wrote them has answered.

    Removal costs a system call per entry, and more where the file system
    frees a block per entry: on ext4 with online discard the few hundred long
    symlinks of a busybox ``--install`` take some 25 ms, which a client would
    otherwise wait for before it sees its result. At most ``backlog`` trees
    wait; a build that ends while they do waits for room, so finished trees
    never take more disk than that many beside the running builds' own.

    The thread starts with the first removal, once whoever owns this has
    spawned what it spawns: nothing here forks, and nothing forks after it.
    Once ``close`` has begun, a build still ending (a server stopping while a
    build collects its outputs) removes its tree itself. Everything is queued
    under one lock, so nothing lands behind the thread's last item.
    """

    def __init__(self, backlog: int) -> None:
        self._pending: queue.Queue[_Removal | threading.Event | None] = queue.Queue(max(1, backlog))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def remove(self, path: Path, then: Callable[[], None]) -> None:
        """Queue ``path`` for removal; ``then`` runs after it, whether the removal worked or not."""
        with self._lock:
            if not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._remove_queued, name="tree-removal", daemon=True
                    )
                    self._thread.start()
                self._pending.put((path, then))
                return
        _remove_then(path, then)

    def wait(self) -> None:
        """Return once every tree queued so far is gone (or failed to go).

        A marker queued behind them is reached only after them; trees queued
        later are not waited for.
        """
        reached = threading.Event()
        with self._lock:
            if self._thread is None:
                return
            self._pending.put(reached)
        reached.wait()

    def close(self) -> None:
        """Finish the queued removals and stop the thread."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._pending.put(None)
        if thread is not None:
            thread.join()

    def _remove_queued(self) -> None:
        while (item := self._pending.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
            else:
                _remove_then(*item)


def _remove_then(path: Path, then: Callable[[], None]) -> None:
    """Remove ``path``, then run ``then``; failures of either are logged, never raised."""
    try:
        remove_tree(path)
    except OSError as exc:
        # The owner's age sweep tries again later.
        logger.warning("could not remove %s: %s", path, exc)
    except Exception:
        logger.exception("removing %s failed", path)
    try:
        then()
    except Exception:
        logger.exception("after removing %s", path)

"""A data directory as ``builder-nix-serve``'s backend: its store, and builds in sandboxes here.

Nix starts one process per derivation it offloads, several at once on one
data directory. The embedded executor's work directory (sandboxes, the
materialisation cache, the result cache) is therefore private to each
process: a directory under ``<data dir>/nix-serve`` held by an ``flock`` for
the process's lifetime and swept by the next process once its owner is gone.
The stores themselves (fs blobs, SQLite databases) are safe for concurrent
writers; sandbox uids are allocated through host-wide locks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from builder.castore.owned_dir import OwnedDirectory
from builder.executor.config import BuildConfig, BuildLimits
from builder.executor.removal import remove_tree
from builder.executor.service import BuildExecutor, BuildService
from builder.nixserve.launching import spawn_launcher
from builder.nixserve.paths import RecordingLock
from builder.store.store import Store
from sandbox.launcher import Launcher

WORK_DIR = "nix-serve"


class EmbeddedBackend:
    """A data directory: its store, and builds in sandboxes of this process.

    The sandbox launcher forks, so it is spawned before this process has
    threads: by the caller, as early as it can so that its start overlaps
    other work, or else here at the first build, before the watcher threads
    of that build exist. The build service's own threads come after it.
    Fixed-output builds may use the network, as with ``builder nix build``
    on one's own machine.
    """

    def __init__(self, data_dir: Path, launcher: Launcher | None = None) -> None:
        self._data_dir = data_dir
        # Closed in reverse: the build service, its work directory, the launcher.
        self._opened = contextlib.ExitStack()
        if launcher is not None:
            self._opened.callback(launcher.stop)
        self._launcher = launcher
        try:
            self._store = Store.open(None, data_dir)
        except BaseException:
            self._opened.close()
            raise
        self.blobs = self._store.blobs
        self.directories = self._store.directories
        self.pathinfos = self._store.pathinfos
        self.recording = RecordingLock(data_dir)
        self._service: BuildService | None = None

    def executor(self) -> BuildExecutor:
        if self._service is None:
            launcher = self._ready_launcher()
            work = OwnedDirectory(self._data_dir / WORK_DIR, remove_tree)
            self._opened.callback(work.close)
            # Nix sends its own build timeout with every build (enforced in
            # building.py); the executor's default wall time would cut in below it.
            # The executor's log bound stays: it holds each build's log in memory.
            limits = dataclasses.replace(BuildLimits(), wall_time=None)
            config = BuildConfig(work_dir=work.path, limits=limits, allow_network=True)
            service = BuildService(
                config, self.blobs, self.directories, launcher, self._store.results
            )
            self._opened.callback(service.close)
            self._service = service
        return self._service

    def _ready_launcher(self) -> Launcher:
        if self._launcher is None:
            self._launcher = spawn_launcher()
            self._opened.callback(self._launcher.stop)
        return self._launcher.wait_ready()

    def close(self) -> None:
        try:
            self._opened.close()
        finally:
            self._store.close()

"""Where ``builder-nix-serve`` keeps paths and runs builds: a data directory or a server.

``--store`` names either a data directory (the embedded store, builds in a
sandbox launched by this process) or a ``builder serve`` (its castore and
PathInfo service, builds through its build service, nothing run here).

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
import os
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.blobs.service import BlobService
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.service import DirectoryService
from builder.castore.grpc.security import ChannelSecurity, read_channel_security
from builder.castore.owned_dir import OwnedDirectory
from builder.errors import FailedPreconditionError, InvalidArgumentError
from builder.executor.config import BuildConfig, BuildLimits
from builder.executor.removal import remove_tree
from builder.executor.service import BuildExecutor, BuildService
from builder.remote.executor import RemoteBuildExecutor
from builder.store.pathinfos.grpc import GrpcPathInfoService
from builder.store.service import PathInfoService
from builder.store.store import Store, default_data_dir
from sandbox import Launcher

WORK_DIR = "nix-serve"
SECURITY_SETTINGS = ("tls_ca", "tls_cert", "tls_key", "token_file")
GRPC_PREFIXES = ("grpc+unix://", "grpc+http://", "grpc+https://")


class ServeBackend(Protocol):
    blobs: BlobService
    directories: DirectoryService
    pathinfos: PathInfoService

    def executor(self) -> BuildExecutor:
        """The build executor, set up on first use (most connections never build)."""
        ...

    def close(self) -> None: ...


class EmbeddedBackend:
    """A data directory: its store, and builds in sandboxes of this process.

    The sandbox launcher forks, so it starts at the first build, before the
    watcher threads of that build exist; the build service's own threads
    come after it. Fixed-output builds may use the network, as with
    ``builder nix build`` on one's own machine.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._store = Store.open(None, data_dir)
        self.blobs = self._store.blobs
        self.directories = self._store.directories
        self.pathinfos = self._store.pathinfos
        # Closed in reverse: the build service, its work directory, the launcher.
        self._opened = contextlib.ExitStack()
        self._service: BuildService | None = None

    def executor(self) -> BuildExecutor:
        if self._service is None:
            if threading.active_count() > 1:
                names = ", ".join(t.name for t in threading.enumerate())
                raise FailedPreconditionError(
                    f"the sandbox launcher must start before any thread, found: {names}"
                )
            launcher = Launcher().start()
            self._opened.callback(launcher.stop)
            work = OwnedDirectory(self._data_dir / WORK_DIR, remove_tree)
            self._opened.callback(work.close)
            # Nix sends its own build timeout with every build (enforced in
            # building.py); the executor's default wall time would cut in below it.
            # The executor's log bound stays: it holds each build's log in memory.
            limits = dataclasses.replace(BuildLimits(), wall_time=None)
            config = BuildConfig(work_dir=work.path, limits=limits, allow_network=True)
            service = BuildService(config, self.blobs, self.directories, launcher)
            self._opened.callback(service.close)
            self._service = service
        return self._service

    def close(self) -> None:
        try:
            self._opened.close()
        finally:
            self._store.close()


class RemoteBackend:
    """A ``builder serve``: every path, blob and build lives there."""

    def __init__(self, url: str, security: ChannelSecurity) -> None:
        self._url = url
        self._security = security
        self.blobs = GrpcBlobService(url, security=security)
        self.directories = GrpcDirectoryService(url, security=security)
        self.pathinfos = GrpcPathInfoService(url, security=security)
        self._executor: RemoteBuildExecutor | None = None

    def executor(self) -> BuildExecutor:
        if self._executor is None:
            self._executor = RemoteBuildExecutor(
                self._url, self.blobs, self.directories, self._security
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
        for service in (self.pathinfos, self.directories, self.blobs):
            service.close()


def security_settings(config: Path | None, environ: Mapping[str, str]) -> ChannelSecurity:
    """TLS material and token for the server: from ``--config`` if given, else the environment."""
    if config is not None:
        try:
            with config.open("rb") as file:
                settings = tomllib.load(file)
        except OSError as exc:
            raise InvalidArgumentError(f"--config {config}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgumentError(f"--config {config}: not valid TOML: {exc}") from exc
        unknown = sorted(set(settings) - set(SECURITY_SETTINGS))
        if unknown:
            raise InvalidArgumentError(
                f"--config {config}: unknown settings {', '.join(unknown)} "
                f"(known: {', '.join(SECURITY_SETTINGS)})"
            )
        values = {}
        for key in SECURITY_SETTINGS:
            value = settings.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"--config {config}: {key} must be a file name")
            values[key] = value

        def name(setting: str) -> str:
            return f"--config {config}: {setting}"

    else:
        values = {key: environ.get(f"BUILDER_{key.upper()}") or None for key in SECURITY_SETTINGS}

        def name(setting: str) -> str:
            return f"BUILDER_{setting.upper()}"

    paths = {key: Path(value) if value else None for key, value in values.items()}
    return read_channel_security(
        paths["tls_ca"], paths["tls_cert"], paths["tls_key"], paths["token_file"], name
    )


def open_backend(store: str | None, config: Path | None) -> ServeBackend:
    if store is not None and store.startswith(GRPC_PREFIXES):
        return RemoteBackend(store, security_settings(config, os.environ))
    if config is not None:
        raise InvalidArgumentError("--config sets up a server connection; --store names none")
    if store is None:
        return EmbeddedBackend(default_data_dir())
    if not os.path.isabs(store):
        raise InvalidArgumentError(
            f"--store {store!r}: expected an absolute data directory or "
            f"{', '.join(p + '...' for p in GRPC_PREFIXES)}"
        )
    return EmbeddedBackend(Path(store))

"""Where ``builder-nix-serve`` keeps paths and runs builds: a data directory or a server.

``--store`` names either a data directory (the embedded store, builds in a
sandbox launched by this process) or a ``builder serve`` (its castore and
PathInfo service, builds through its build service, nothing run here). Each
kind lives in a module of its own, imported only when ``--store`` names that
kind: Nix starts a process per offloaded derivation, and one on a data
directory has no use for the gRPC clients.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from builder.castore.grpc.endpoint import did_you_mean
from builder.errors import InvalidArgumentError
from builder.nixserve.options import GRPC_PREFIXES

if TYPE_CHECKING:
    from builder.castore.blobs.service import BlobService
    from builder.castore.directories.service import DirectoryService
    from builder.executor.service import BuildExecutor
    from builder.nixserve.paths import RecordingLock
    from builder.store.service import PathInfoService
    from sandbox.launcher import Launcher


class ServeBackend(Protocol):
    blobs: BlobService
    directories: DirectoryService
    pathinfos: PathInfoService
    recording: RecordingLock

    def executor(self) -> BuildExecutor:
        """The build executor, set up on first use (most connections never build)."""
        ...

    def close(self) -> None: ...


def open_backend(
    store: str | None, config: Path | None, launcher: Launcher | None = None
) -> ServeBackend:
    """The backend ``--store`` names; an early ``launcher`` serves a data directory's builds."""
    if store is not None and store.startswith(GRPC_PREFIXES):
        from builder.nixserve.remote_backend import RemoteBackend, security_settings

        return RemoteBackend(store, security_settings(config, os.environ))
    if config is not None:
        raise InvalidArgumentError("--config sets up a server connection; --store names none")
    if store is not None and not os.path.isabs(store):
        raise InvalidArgumentError(
            f"--store {store!r}: expected an absolute data directory or "
            f"{', '.join(p + '...' for p in GRPC_PREFIXES)}{did_you_mean(store)}"
        )
    from builder.nixserve.embedded_backend import EmbeddedBackend
    from builder.store.store import default_data_dir

    return EmbeddedBackend(default_data_dir() if store is None else Path(store), launcher)

"""A ``builder serve`` as ``builder-nix-serve``'s backend: every path, blob and build lives there.

TLS material and a token for the server come from ``--config`` or the
environment. The file follows the rules of ``builder serve --config``:
snake_case keys, each checked, and relative paths relative to the file's
directory (the account's home, where ssh starts the program, says nothing
about where the file's neighbours are).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.grpc.security import ChannelSecurity, read_channel_security
from builder.config_file import read_toml_file
from builder.errors import InvalidArgumentError
from builder.executor.service import BuildExecutor
from builder.nixserve.paths import RecordingLock
from builder.remote.executor import RemoteBuildExecutor
from builder.store.pathinfos.grpc import GrpcPathInfoService

SECURITY_SETTINGS = ("tls_ca", "tls_cert", "tls_key", "token_file")


class RemoteBackend:
    """A ``builder serve``: every path, blob and build lives there."""

    def __init__(self, url: str, security: ChannelSecurity) -> None:
        self._url = url
        self._security = security
        self.blobs = GrpcBlobService(url, security=security)
        self.directories = GrpcDirectoryService(url, security=security)
        self.pathinfos = GrpcPathInfoService(url, security=security)
        self.recording = RecordingLock(None)
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
    base = None
    if config is not None:
        base = config.absolute().parent
        settings = read_toml_file(config)
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

    paths = {key: _path(value, base) for key, value in values.items()}
    return read_channel_security(
        paths["tls_ca"], paths["tls_cert"], paths["tls_key"], paths["token_file"], name
    )


def _path(value: str | None, base: Path | None) -> Path | None:
    """A setting's file, relative to ``base`` (the config file's directory) if given."""
    if not value:
        return None
    return base / value if base is not None else Path(value)

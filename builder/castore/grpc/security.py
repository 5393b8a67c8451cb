"""What a client presents beyond the address, read from the files an operator names.

The command line and store configurations name the same four files under
different spellings (``--tls-ca`` and ``tls_ca``), so both read them here and
only tell how a setting is called in a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InvalidArgumentError


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS material and a bearer token for one client.

    ``root_certificates`` are the CAs a ``grpc+https`` server is checked
    against (None: the system's); ``client_key`` and ``client_cert`` (PEM)
    answer a server that requires client certificates; ``token`` is sent as
    ``authorization: Bearer <token>`` on every call, over any transport, so
    over ``grpc+http`` it travels in the clear.
    """

    root_certificates: bytes | None = None
    client_key: bytes | None = None
    client_cert: bytes | None = None
    token: str | None = None


def read_channel_security(
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
    setting_name: Callable[[str], str],
) -> ChannelSecurity:
    """Read each named file; ``setting_name`` turns ``tls_ca`` into the caller's spelling."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidArgumentError(
            f"{setting_name('tls_cert')} and {setting_name('tls_key')} go together"
        )

    def read(setting: str, path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InvalidArgumentError(f"{setting_name(setting)} {path}: {exc.strerror}") from exc

    token = read("token_file", token_file)
    return ChannelSecurity(
        root_certificates=read("tls_ca", tls_ca),
        client_key=read("tls_key", tls_key),
        client_cert=read("tls_cert", tls_cert),
        token=token.decode().strip() if token is not None else None,
    )

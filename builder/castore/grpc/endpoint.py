"""Addresses as operators write them, and what gRPC's own APIs take for them."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from builder.errors import InvalidArgumentError

UNIX_SCHEME = "grpc+unix"
HTTP_SCHEME = "grpc+http"
HTTPS_SCHEME = "grpc+https"


@dataclass(frozen=True)
class Endpoint:
    """A parsed address; ``target`` is the form gRPC's own APIs accept."""

    url: str
    target: str
    unix_path: str | None = None
    tls: bool = False


def parse_endpoint(url: str) -> Endpoint:
    """Accept ``grpc+unix:///abs/path.sock`` and ``grpc+http://host:port``."""
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise InvalidArgumentError(f"{url!r}: expected grpc+unix:///absolute/path.sock")
        return Endpoint(url, f"unix:{parts.path}", parts.path)
    if parts.scheme == HTTP_SCHEME:
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidArgumentError(f"{url!r}: expected grpc+http://host:port")
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidArgumentError(f"{url!r}: {exc}") from exc
        if port is None or not parts.hostname:
            raise InvalidArgumentError(f"{url!r}: host and port are required")
        host = parts.hostname
        return Endpoint(url, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    raise InvalidArgumentError(
        f"{url!r}: unsupported scheme {parts.scheme!r}, expected {UNIX_SCHEME} or {HTTP_SCHEME}"
    )


def parse_client_endpoint(url: str) -> Endpoint:
    """``parse_endpoint`` plus ``grpc+https://host:port``, which only a client can dial.

    Servers keep to ``parse_endpoint``: whether a listener speaks TLS is
    decided by the certificate it is given, not by the URL.
    """
    parts = urlsplit(url)
    if parts.scheme != HTTPS_SCHEME:
        return parse_endpoint(url)
    plain = parse_endpoint(parts._replace(scheme=HTTP_SCHEME).geturl())
    return Endpoint(url, plain.target, tls=True)

"""Addresses as operators write them, and what gRPC's own APIs take for them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from builder.errors import InvalidArgumentError

UNIX_SCHEME = "grpc+unix"
HTTP_SCHEME = "grpc+http"
HTTPS_SCHEME = "grpc+https"

# Schemes people carry over from gRPC's own target syntax and other tools,
# and the one of ours each stands for.
_UNPREFIXED = {"http": HTTP_SCHEME, "https": HTTPS_SCHEME, "grpc": HTTP_SCHEME}
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]+")


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
        f"{url!r}: unsupported scheme {parts.scheme!r}, expected {UNIX_SCHEME} or "
        f"{HTTP_SCHEME}{did_you_mean(url)}"
    )


def suggested_url(address: str) -> str | None:
    """The URL of ours an address most likely means, when it is written in another tool's way.

    ``unix:/path``, ``dns:///host:port`` and a bare ``host:port`` are gRPC's
    own target forms; ``http://`` and ``https://`` are what a browser shows.
    """
    if _HOST_PORT.fullmatch(address):
        return f"{HTTP_SCHEME}://{address}"
    parts = urlsplit(address)
    if parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/"):
        return f"{UNIX_SCHEME}://{parts.path}"
    if parts.scheme == "dns" and _HOST_PORT.fullmatch(parts.path.lstrip("/")):
        return f"{HTTP_SCHEME}://{parts.path.lstrip('/')}"
    scheme = _UNPREFIXED.get(parts.scheme)
    if scheme is not None and parts.netloc:
        return parts._replace(scheme=scheme).geturl()
    return None


def did_you_mean(address: str) -> str:
    """``; did you mean '...'?`` for an error message about ``address``, or nothing."""
    suggestion = suggested_url(address)
    return f"; did you mean {suggestion!r}?" if suggestion else ""


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

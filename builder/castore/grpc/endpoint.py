"""Addresses as operators write them, and what gRPC's own APIs take for them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from builder.errors import InvalidArgumentError

UNIX_SCHEME = "grpc+unix"
HTTP_SCHEME = "grpc+http"
HTTPS_SCHEME = "grpc+https"
DNS_SCHEME = "grpc+dns"

# A client's address list is its own configuration, but one mistyped
# without a comma bound could still open thousands of connections.
MAX_CLIENT_ADDRESSES = 64

# Schemes people carry over from gRPC's own target syntax and other tools,
# and the one of ours each stands for.
_UNPREFIXED = {"http": HTTP_SCHEME, "https": HTTPS_SCHEME, "grpc": HTTP_SCHEME}
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_TLS_NAME_QUERY = "tls_name="
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]+")


@dataclass(frozen=True)
class Endpoint:
    """A parsed address; ``target`` is the form gRPC's own APIs accept."""

    url: str
    target: str
    unix_path: str | None = None
    tls: bool = False
    tls_name: str | None = None
    """The name every server's certificate must carry, when ``target`` names none."""


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
    """What a client may dial: ``parse_endpoint``'s forms, TLS, lists and DNS names.

    - ``grpc+https://host:port``: TLS. Servers keep to ``parse_endpoint``:
      whether a listener speaks TLS is decided by its certificate, not its URL.
    - ``grpc+http://10.0.0.1:8000,10.0.0.2:8000``: several builders by IP
      address, one family per list, as gRPC's ``ipv4:`` and ``ipv6:`` targets
      require. Over TLS, ``grpc+https://10.0.0.1:443,...?tls_name=NAME``: an IP
      list names no host to check certificates by, so all must carry NAME.
    - ``grpc+unix:///run/a.sock,/run/b.sock``: several local builders.
    - ``grpc+dns:///host:port``: every address the name resolves to, re-resolved
      as connections fail. Plain text only; for TLS, ``grpc+https://host:port``
      resolves a name the same way.

    The channel spreads calls over all addresses (see ``channel.py``).
    """
    scheme, separator, rest = url.partition("://")
    if scheme not in (UNIX_SCHEME, HTTP_SCHEME, HTTPS_SCHEME, DNS_SCHEME):
        raise InvalidArgumentError(
            f"{url!r}: unsupported scheme {urlsplit(url).scheme!r}, expected {UNIX_SCHEME}, "
            f"{HTTP_SCHEME}, {HTTPS_SCHEME} or {DNS_SCHEME}{did_you_mean(url)}"
        )
    if scheme == DNS_SCHEME:
        return _dns_endpoint(url, rest)
    tls_name = None
    if scheme == HTTPS_SCHEME and "?" in rest:
        rest, _, query = rest.partition("?")
        tls_name = query.removeprefix(_TLS_NAME_QUERY)
        if not query.startswith(_TLS_NAME_QUERY) or not _HOST_NAME.fullmatch(tls_name):
            raise InvalidArgumentError(
                f"{url!r}: the only query is ?{_TLS_NAME_QUERY}NAME, a host name"
            )
    items = rest.split(",") if separator else [rest]
    if len(items) == 1:
        if tls_name is not None:
            raise InvalidArgumentError(
                f"{url!r}: {_TLS_NAME_QUERY} is for a list; one address is checked by its host"
            )
        return _single_client_endpoint(url)
    if len(items) > MAX_CLIENT_ADDRESSES:
        raise InvalidArgumentError(
            f"{url!r}: {len(items)} addresses, at most {MAX_CLIENT_ADDRESSES} are allowed"
        )
    if "" in items:
        raise InvalidArgumentError(f"{url!r}: an empty address in the comma-separated list")
    try:
        endpoints = [_single_client_endpoint(f"{scheme}://{item}") for item in items]
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{url!r}: {exc}") from exc
    if scheme == UNIX_SCHEME:
        paths = [e.unix_path for e in endpoints]
        return Endpoint(url, "unix:" + ",".join(p for p in paths if p is not None))
    target = _ip_list_target(url, [e.target for e in endpoints])
    if scheme == HTTPS_SCHEME and tls_name is None:
        raise InvalidArgumentError(
            f"{url!r}: a list over TLS needs ?{_TLS_NAME_QUERY}NAME, the host name every "
            "builder's certificate carries"
        )
    return Endpoint(url, target, tls=scheme == HTTPS_SCHEME, tls_name=tls_name)


def _single_client_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme != HTTPS_SCHEME:
        return parse_endpoint(url)
    plain = parse_endpoint(parts._replace(scheme=HTTP_SCHEME).geturl())
    return Endpoint(url, plain.target, tls=True)


def _dns_endpoint(url: str, rest: str) -> Endpoint:
    name = rest.removeprefix("/")
    if not rest.startswith("/") or not _HOST_PORT.fullmatch(name) or name.startswith("["):
        raise InvalidArgumentError(
            f"{url!r}: expected {DNS_SCHEME}:///HOST:PORT (one DNS name, no server authority)"
        )
    return Endpoint(url, f"dns:///{name}")


def _ip_list_target(url: str, targets: list[str]) -> str:
    """gRPC's ``ipv4:a:p,b:p`` or ``ipv6:[a]:p,[b]:p`` for a list of ``host:port``."""
    versions = set()
    for target in targets:
        host = target.rpartition(":")[0].strip("[]")
        try:
            versions.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise InvalidArgumentError(
                f"{url!r}: {host!r} is a name; a list of several builders takes IP addresses "
                f"(or give one name that resolves to them all: {DNS_SCHEME}:///NAME:PORT)"
            ) from None
    if len(versions) > 1:
        raise InvalidArgumentError(
            f"{url!r}: IPv4 and IPv6 addresses mixed; a list takes one family"
        )
    return f"ipv{versions.pop()}:" + ",".join(targets)

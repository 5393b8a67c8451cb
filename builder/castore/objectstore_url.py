"""From a store address to an obstore client, and from its failures to ours.

An address is written as one string so it fits a command-line flag or a
composition entry: ``s3://bucket/prefix?endpoint=http://host:9000&region=x``.
Query parameters are store options; those that configure the HTTP client
(``allow_http``, timeouts, proxies) are told apart from those that configure
the store itself (endpoint, region, credentials) because obstore takes the two
in separate arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import obstore.store
from obstore.exceptions import BaseError
from obstore.store import ObjectStore

from builder.castore.composition import Params
from builder.errors import InvalidArgumentError, UnavailableError

_CLIENT_OPTIONS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "root_certificate",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)

_LOCAL_SCHEMES = frozenset({"file", "memory"})


def parse_objectstore_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``<store-url>?k=v&...`` into the store URL and its options.

    Takes what follows ``objectstore+`` in a composition address. A key given
    twice is an error rather than a silent last-one-wins.
    """
    parts = urlsplit(url)
    if not parts.scheme:
        raise InvalidArgumentError(f"object store address {url!r} has no scheme")
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in options:
            raise InvalidArgumentError(f"object store address {url!r} sets {key!r} twice")
        options[key] = value
    if parts.fragment:
        raise InvalidArgumentError(f"object store address {url!r} has a fragment")
    # Cut the string rather than reassemble it: urlunsplit would turn
    # "memory://" into "memory:".
    return url.split("?", 1)[0], options


_SHOWN_OPTIONS = frozenset({"endpoint", "region", "allow_http"})
"""Options whose values say where a store is rather than how to get in."""

HIDDEN = "<hidden>"


def address_for_logs(address: str) -> str:
    """``address`` with the values of its options hidden, except where the store is.

    Credentials travel as options (``secret_access_key=...``) and a log is
    read by more people than the store's owner; the keys still show what
    was set. A password in the address itself is hidden too.
    """
    head, sep, query = address.partition("?")
    parts = urlsplit(head)
    if parts.password is not None:
        head = head.replace(f":{parts.password}@", f":{HIDDEN}@", 1)
    if not sep:
        return head
    shown = [
        f"{key}={quote(value, safe='') if key in _SHOWN_OPTIONS else HIDDEN}"
        for key, value in parse_qsl(query, keep_blank_values=True)
    ]
    return f"{head}?{'&'.join(shown)}"


def open_store(url: str, options: dict[str, str] | None = None) -> ObjectStore:
    """Build the obstore client for ``url``; local stores create their directory."""
    options = dict(options or {})
    scheme = urlsplit(url).scheme
    if scheme in _LOCAL_SCHEMES and options:
        raise InvalidArgumentError(
            f"object store {url}: options {sorted(options)} apply only to remote stores"
        )
    try:
        if scheme == "file":
            return obstore.store.from_url(url, mkdir=True)
        if scheme == "memory":
            return obstore.store.from_url(url)
        client = {k: v for k, v in options.items() if k in _CLIENT_OPTIONS}
        config = {k: v for k, v in options.items() if k not in _CLIENT_OPTIONS}
        return obstore.store.from_url(
            url,
            config=config or None,  # type: ignore[arg-type]
            client_options=client or None,  # type: ignore[arg-type]
        )
    except (BaseError, ValueError) as exc:
        # Building a client does no I/O, so any failure is in what we were given.
        raise InvalidArgumentError(f"object store {url}: {_summary(exc)}") from exc


def _summary(exc: Exception) -> str:
    """obstore appends a multi-line debug dump; the first line is the message."""
    return str(exc).split("\n", 1)[0]


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Report a store that cannot be reached or refuses us as UnavailableError.

    ``FileNotFoundError`` (obstore's "no such object") passes through, since
    callers treat absence as an answer, not a failure.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except BaseError as exc:
        raise UnavailableError(f"{what}: {_summary(exc)}") from exc


# How a composition names an object store: the store URL behind this prefix.
OBJECTSTORE_SCHEMES = ("objectstore+",)


def objectstore_url_params(url: str) -> dict[str, Any]:
    return {"url": url.removeprefix("objectstore+")}


def objectstore_location(params: Params) -> tuple[str, dict[str, str]]:
    """The store URL and its options, those of an ``options`` table added to the query's."""
    url, options = parse_objectstore_url(params.string("url"))
    options.update(params.mapping("options"))
    return url, options

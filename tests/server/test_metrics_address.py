"""``--metrics-listen`` addresses: what is accepted, and what is refused naming the flag."""

from __future__ import annotations

import pytest

from builder.errors import InvalidArgumentError
from builder.server.metrics import MetricsAddress, parse_metrics_address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9100", "127.0.0.1", 9100),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[::1]:9100", "::1", 9100),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_accepted(text: str, host: str, port: int) -> None:
    address = parse_metrics_address(text)
    assert address == MetricsAddress(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    "text", ["9100", "localhost", ":9100", "host:", "host:65536", "host:-1", "host:http", "[]:1"]
)
def test_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"--metrics-listen .*expected HOST:PORT"):
        parse_metrics_address(text)

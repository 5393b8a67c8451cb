"""Client addresses naming several builders, and what gRPC target each becomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.castore.grpc.endpoint import (
    MAX_CLIENT_ADDRESSES,
    parse_client_endpoint,
    parse_endpoint,
)
from builder.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "target", "tls"),
    [
        ("grpc+http://10.0.0.1:8000,10.0.0.2:8001", "ipv4:10.0.0.1:8000,10.0.0.2:8001", False),
        (
            "grpc+https://10.0.0.1:443,10.0.0.2:443?tls_name=builders.example",
            "ipv4:10.0.0.1:443,10.0.0.2:443",
            True,
        ),
        ("grpc+http://[::1]:8000,[fd00::2]:8000", "ipv6:[::1]:8000,[fd00::2]:8000", False),
        ("grpc+unix:///run/a.sock,/run/b.sock", "unix:/run/a.sock,/run/b.sock", False),
        ("grpc+dns:///builders.example:8000", "dns:///builders.example:8000", False),
        # One address is what it always was; a name resolves to all its addresses.
        ("grpc+http://builders.example:8000", "builders.example:8000", False),
        ("grpc+unix:///run/a.sock", "unix:/run/a.sock", False),
    ],
)
def test_client_targets(url: str, target: str, tls: bool) -> None:
    endpoint = parse_client_endpoint(url)
    assert (endpoint.target, endpoint.tls) == (target, tls)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("grpc+http://h1:8000,h2:8000", "'h1' is a name; a list of several builders takes IP"),
        ("grpc+http://10.0.0.1:1,[::1]:2", "IPv4 and IPv6 addresses mixed"),
        ("grpc+http://10.0.0.1:1,", "an empty address in the comma-separated list"),
        ("grpc+http://10.0.0.1:1,10.0.0.2", "'grpc+http://10.0.0.2': host and port are required"),
        ("grpc+unix:///run/a.sock,run/b.sock", "expected grpc+unix:///absolute/path.sock"),
        ("grpc+dns://8.8.8.8/builders.example:8000", "expected grpc+dns:///HOST:PORT"),
        ("grpc+dns:///builders.example", "expected grpc+dns:///HOST:PORT"),
        ("grpc+https://10.0.0.1:1,10.0.0.2:1", "a list over TLS needs ?tls_name=NAME"),
        ("grpc+https://10.0.0.1:1,10.0.0.2:1?name=x", "the only query is ?tls_name=NAME"),
        ("grpc+https://10.0.0.1:1,10.0.0.2:1?tls_name=", "the only query is ?tls_name=NAME"),
        ("grpc+https://b.example:1?tls_name=b.example", "tls_name= is for a list"),
        ("dns:///builders.example:80", "unsupported scheme 'dns', expected grpc+unix, grpc+http"),
    ],
)
def test_client_address_errors_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        parse_client_endpoint(url)
    assert str(raised.value).startswith(repr(url))
    assert problem in str(raised.value)


def test_a_tls_list_names_the_certificates_host() -> None:
    endpoint = parse_client_endpoint("grpc+https://10.0.0.1:1,10.0.0.2:1?tls_name=b.example")
    assert endpoint.tls_name == "b.example"
    assert parse_client_endpoint("grpc+https://b.example:1").tls_name is None


def test_a_list_is_bounded() -> None:
    many = ",".join(f"10.0.0.{i}:8000" for i in range(MAX_CLIENT_ADDRESSES + 1))
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_CLIENT_ADDRESSES}"):
        parse_client_endpoint(f"grpc+http://{many}")


@pytest.mark.parametrize(
    "url", ["grpc+http://10.0.0.1:1,10.0.0.2:2", "grpc+dns:///builders.example:8000"]
)
def test_servers_listen_on_one_address(url: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_endpoint(url)


def test_a_bad_list_reads_plainly(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "build",
            "--remote",
            "grpc+http://h1:8000,h2:8000",
            str(ROOT / "examples" / "hello.json"),
        ],
        env={"BUILDER_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "builder: error: 'grpc+http://h1:8000,h2:8000': 'h1' is a name; a list of several "
        "builders takes IP addresses (or give one name that resolves to them all: "
        "grpc+dns:///NAME:PORT)"
    ]

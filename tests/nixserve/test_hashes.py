"""The forms of a NAR hash and a signature a client may send."""

from __future__ import annotations

import base64
import hashlib

import pytest

from builder.errors import InvalidArgumentError
from builder.nixserve.session import format_signature, parse_nar_hash, parse_signature
from builder.store import nixbase32

DIGEST = hashlib.sha256(b"nar").digest()


@pytest.mark.parametrize(
    "text",
    [
        DIGEST.hex(),
        f"sha256:{DIGEST.hex()}",
        nixbase32.encode(DIGEST),
        f"sha256:{nixbase32.encode(DIGEST)}",
        f"sha256-{base64.b64encode(DIGEST).decode()}",
    ],
)
def test_nar_hash_forms(text: str) -> None:
    assert parse_nar_hash(text) == DIGEST


@pytest.mark.parametrize(
    "text", ["", "sha1:" + "0" * 40, DIGEST.hex()[:-2], "z" * 64, "md5-" + "A" * 24]
)
def test_not_a_nar_hash(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"narHash: .* is not a SHA-256 hash"):
        parse_nar_hash(text)


def test_signature_round_trip() -> None:
    text = "cache.example.org-1:" + base64.b64encode(bytes(64)).decode()
    assert format_signature(parse_signature(text)) == text


@pytest.mark.parametrize("text", ["no-colon", ":AAAA", "key:not base64!", "key:é", "key:\udcff"])
def test_malformed_signature(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="signature"):
        parse_signature(text)

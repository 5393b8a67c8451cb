"""The 32-byte BLAKE3 digest that addresses every blob and directory."""

from __future__ import annotations

import base64
import binascii

import blake3

from builder.errors import InvalidArgumentError

DIGEST_SIZE = 32
TEXT_PREFIX = "blake3-"
_URL_SAFE = str.maketrans("-_", "+/")


class Digest(bytes):
    """A BLAKE3 digest; being a ``bytes`` it goes onto the wire and into maps as is."""

    def __new__(cls, value: bytes | bytearray | memoryview) -> Digest:
        raw = bytes(value)
        if len(raw) != DIGEST_SIZE:
            raise InvalidArgumentError(f"digest must be {DIGEST_SIZE} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_field(cls, value: bytes, field: str) -> Digest:
        """Validate a digest taken from a named message field, naming it on failure."""
        if len(value) != DIGEST_SIZE:
            raise InvalidArgumentError(
                f"{field}: digest must be {DIGEST_SIZE} bytes, got {len(value)}"
            )
        return cls(value)

    @classmethod
    def of(cls, data: bytes | memoryview) -> Digest:
        return cls(blake3.blake3(data).digest())

    @classmethod
    def parse(cls, text: str) -> Digest:
        """The one reader of a digest a user typed, in every form the product prints.

        ``blake3-<base64>`` is what commands print; bare base64 is how protobuf
        JSON (``--json``) shows a digest field; 64 hex digits is how other
        BLAKE3 tools show one. Base64 may be standard or URL-safe, since JSON
        readers accept both.
        """
        body = text.removeprefix(TEXT_PREFIX)
        if len(body) == 2 * DIGEST_SIZE and body == text:
            try:
                return cls(bytes.fromhex(body))
            except ValueError as exc:
                raise InvalidArgumentError(f"malformed digest {text!r}: {exc}") from exc
        try:
            raw = base64.b64decode(body.translate(_URL_SAFE), validate=True)
        except binascii.Error as exc:
            raise InvalidArgumentError(
                f"malformed digest {text!r}: expected blake3-<base64>, base64 or 64 hex digits"
            ) from exc
        if len(raw) != DIGEST_SIZE:
            raise InvalidArgumentError(
                f"malformed digest {text!r}: digest must be {DIGEST_SIZE} bytes, got {len(raw)}"
            )
        return cls(raw)

    def __str__(self) -> str:
        return TEXT_PREFIX + base64.b64encode(self).decode()

    def __repr__(self) -> str:
        return f"Digest({self})"

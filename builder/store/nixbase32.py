"""Nix's base-32 text, used for store path hash parts and for hashes Nix prints.

The bytes are read as one little-endian number and written in 5-bit groups,
most significant first, in an alphabet without ``e``, ``o``, ``u`` and ``t``.
"""

from __future__ import annotations

from builder.errors import InvalidArgumentError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUES = {c: i for i, c in enumerate(ALPHABET)}


def encoded_length(size: int) -> int:
    return (size * 8 + 4) // 5


def encode(data: bytes) -> str:
    value = int.from_bytes(data, "little")
    length = encoded_length(len(data))
    return "".join(ALPHABET[(value >> (5 * i)) & 0x1F] for i in range(length - 1, -1, -1))


def decode(text: str, size: int, where: str = "hash") -> bytes:
    """The ``size`` bytes ``text`` stands for; any other length or stray bit is an error."""
    if len(text) != encoded_length(size):
        raise InvalidArgumentError(
            f"{where}: {len(text)} base-32 characters, expected {encoded_length(size)}"
        )
    value = 0
    for char in text:
        digit = _VALUES.get(char)
        if digit is None:
            raise InvalidArgumentError(f"{where}: {char!r} is not a Nix base-32 character")
        value = value << 5 | digit
    if value >> (size * 8):
        raise InvalidArgumentError(f"{where}: {text!r} has bits beyond {size} bytes")
    return value.to_bytes(size, "little")

"""A reader for the ATerm subset that ``.drv`` files use: strings, lists and tuples.

Errors name the character offset and the field being read, because a
derivation that fails to parse is usually hand-edited or truncated and the
offset is the quickest way to find the damage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from builder.errors import InvalidArgumentError

T = TypeVar("T")

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


class ATermReader:
    def __init__(self, text: str, source: str) -> None:
        self._text = text
        self._source = source
        self.pos = 0

    def error(self, field: str, problem: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self._source}: at offset {self.pos}, {field}: {problem}")

    def expect(self, literal: str, field: str) -> None:
        if not self._text.startswith(literal, self.pos):
            found = self._text[self.pos : self.pos + 10] or "end of input"
            raise self.error(field, f"expected {literal!r}, found {found!r}")
        self.pos += len(literal)

    def peek(self, literal: str) -> bool:
        return self._text.startswith(literal, self.pos)

    def string(self, field: str) -> str:
        self.expect('"', field)
        pieces = []
        start = self.pos
        text = self._text
        while True:
            end = self._next_special(start)
            if end < 0:
                raise self.error(field, "unterminated string")
            pieces.append(text[start:end])
            if text[end] == '"':
                self.pos = end + 1
                return "".join(pieces)
            escaped = text[end + 1 : end + 2]
            if not escaped:
                raise self.error(field, "unterminated string")
            # Nix writes only the five escapes; any other escaped character
            # stands for itself, as Nix's own reader treats it.
            pieces.append(_ESCAPES.get(escaped, escaped))
            start = end + 2

    def _next_special(self, start: int) -> int:
        quote = self._text.find('"', start)
        backslash = self._text.find("\\", start, quote if quote >= 0 else None)
        return backslash if backslash >= 0 else quote

    def list(self, item: Callable[[str], T], field: str) -> list[T]:
        self.expect("[", field)
        items: list[T] = []
        while not self.peek("]"):
            if items:
                self.expect(",", field)
            items.append(item(f"{field}[{len(items)}]"))
        self.pos += 1
        return items

    def strings(self, field: str) -> list[str]:
        return self.list(self.string, field)

    def end(self) -> None:
        if self.pos != len(self._text):
            raise self.error("end", "trailing characters after the derivation")

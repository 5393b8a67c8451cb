"""Finding which of a set of needles occur in a stream of bytes.

Outputs are scanned while they are ingested, in whatever pieces the reader
produces, so a needle split across two reads must still be found: the scanner
keeps the last ``longest needle - 1`` bytes of each piece in front of the next.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class NeedleScanner:
    def __init__(self, needles: Sequence[str | bytes]) -> None:
        self._needles = [n.encode() if isinstance(n, str) else n for n in needles]
        self.found: set[int] = set()
        distinct = sorted({n for n in self._needles if n}, key=len, reverse=True)
        self._overlap = max((len(n) for n in distinct), default=1) - 1
        # A lookahead matches at every position; trying longer needles first
        # means a needle is either reported itself or is a prefix of one that is,
        # which ``_implied`` accounts for.
        self._pattern = (
            re.compile(b"(?=(" + b"|".join(re.escape(n) for n in distinct) + b"))")
            if distinct
            else None
        )
        # Every needle a matched needle contains has matched too.
        self._implied: dict[bytes, list[int]] = {
            found: [i for i, n in enumerate(self._needles) if n and n in found]
            for found in distinct
        }
        self._tail = b""

    def feed(self, data: bytes | memoryview) -> None:
        if self._pattern is None or not data:
            return
        window = self._tail + bytes(data)
        for match in self._pattern.finditer(window):
            self._record(match.group(1))
        self._tail = window[-self._overlap :] if self._overlap else b""

    def scan_whole(self, data: bytes) -> None:
        """Scan a separate item (a symlink target) without joining it to the stream."""
        tail, self._tail = self._tail, b""
        self.feed(data)
        self._tail = tail

    def reset_stream(self) -> None:
        """Start a new file: no needle may span two files."""
        self._tail = b""

    def _record(self, needle: bytes) -> None:
        self.found.update(self._implied[needle])

    def result(self) -> list[int]:
        return sorted(self.found)

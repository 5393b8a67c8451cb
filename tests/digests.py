"""Digests the tests refer to by name."""

from __future__ import annotations

from builder.castore.digest import Digest

EMPTY_DIGEST = Digest.of(b"")

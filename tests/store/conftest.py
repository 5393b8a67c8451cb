"""Fixtures that hand every contract test each PathInfo backend in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.backends import DURABLE_BACKENDS, PATHINFO_BACKENDS, PathInfoBackend


@pytest.fixture(params=sorted(PATHINFO_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PathInfoBackend]:
    with PATHINFO_BACKENDS[request.param](tmp_path) as ready:
        yield ready


@pytest.fixture(params=sorted(n for n in PATHINFO_BACKENDS if n in DURABLE_BACKENDS))
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PathInfoBackend]:
    with PATHINFO_BACKENDS[request.param](tmp_path) as ready:
        assert ready.reopen is not None
        yield ready

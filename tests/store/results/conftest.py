"""Fixtures that hand every contract test each result cache backend in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.store.results.backends import DURABLE_BACKENDS, RESULT_BACKENDS, ResultBackend


@pytest.fixture(params=sorted(RESULT_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    with RESULT_BACKENDS[request.param](tmp_path) as ready:
        yield ready


@pytest.fixture(params=sorted(DURABLE_BACKENDS))
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    with RESULT_BACKENDS[request.param](tmp_path) as ready:
        assert ready.reopen is not None
        yield ready

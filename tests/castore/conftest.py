"""Fixtures that hand every contract test each backend in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.blobs.service import BlobService
from builder.castore.directories.service import DirectoryService
from tests.castore.backends import BLOB_BACKENDS, DIRECTORY_BACKENDS


@pytest.fixture(params=sorted(BLOB_BACKENDS))
def blob_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobService]:
    with BLOB_BACKENDS[request.param](tmp_path) as service:
        yield service


@pytest.fixture(params=sorted(DIRECTORY_BACKENDS))
def directory_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectoryService]:
    with DIRECTORY_BACKENDS[request.param](tmp_path) as service:
        yield service

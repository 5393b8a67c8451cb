"""What every test with real Nix as the client of ``builder-nix-serve`` needs and checks.

Modules opt in with ``pytestmark = pytest.mark.usefixtures("nix_client", "no_strays")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nixserve.offload import SERVE_PROGRAM
from tests.processes import strays
from tests.requirements import require_nix
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def nix_client() -> None:
    require_nix()
    if not SERVE_PROGRAM.is_file():
        pytest.fail(f"{SERVE_PROGRAM} is not installed (pip install -e .)", pytrace=False)


@pytest.fixture
def no_strays() -> Iterator[None]:
    """A remote program ends when Nix closes its connection; nothing it started may outlive it."""
    yield
    wait_for(lambda: not strays(), "the remote programs, launchers and builds of this run to end")

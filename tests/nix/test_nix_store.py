"""Asking the local Nix store which paths it holds."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from builder.errors import UnavailableError
from builder.nix.nix_store import NixStore, nix_environment
from builder.store.store_path import StorePath
from tests.requirements import require_nix


def _absent_path() -> StorePath:
    """A well-formed store path that no store on this machine holds."""
    digest = uuid.uuid4().hex[:32].translate(str.maketrans("eotu", "abcd"))
    return StorePath.parse(f"/nix/store/{digest}-never-built")


def test_paths_not_on_disk_need_no_nix_store_call() -> None:
    """Without nix-store on PATH, only a question about a path on disk can fail."""
    nix = NixStore({**os.environ, "PATH": "/nonexistent"})
    assert nix.valid([_absent_path(), _absent_path()]) == set()


def test_a_path_on_disk_is_still_asked_about(tmp_path: Path) -> None:
    require_nix()
    source = tmp_path / "file"
    source.write_text(uuid.uuid4().hex)
    added = subprocess.run(
        ["nix-store", "--add", str(source)],
        capture_output=True, text=True, env=nix_environment(), check=True,
    ).stdout.strip()  # fmt: skip
    path = StorePath.parse(added)
    assert NixStore().valid([path, _absent_path()]) == {path}
    with pytest.raises(UnavailableError):
        NixStore({**os.environ, "PATH": "/nonexistent"}).valid([path])

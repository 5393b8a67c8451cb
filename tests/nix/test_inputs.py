"""Finding a derivation's inputs among the paths recorded here."""

from __future__ import annotations

import dataclasses
import os

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.errors import NotFoundError
from builder.nix.inputs import InputResolver
from builder.nix.nix_store import NixStore
from builder.store.pathinfos.memory import MemoryPathInfoService
from tests.store.infos import store_path, symlink_info


def _resolver(pathinfos: MemoryPathInfoService) -> InputResolver:
    # No nix-store on PATH: an input not recorded here and not on disk must not need it.
    nix = NixStore({**os.environ, "PATH": "/nonexistent"})
    return InputResolver(pathinfos, nix, MemoryBlobService(), MemoryDirectoryService())


def test_recorded_inputs_and_their_references_make_the_closure() -> None:
    pathinfos = MemoryPathInfoService()
    dep = pathinfos.put(symlink_info("dep"))
    top = pathinfos.put(dataclasses.replace(symlink_info("top"), references=(dep.path,)))
    closure = _resolver(pathinfos).closure([top.path])
    assert closure == sorted([dep, top], key=lambda info: info.path.basename)


def test_a_record_with_the_same_digest_and_another_name_does_not_stand_in() -> None:
    pathinfos = MemoryPathInfoService()
    impostor = pathinfos.put(symlink_info("impostor", seed="wanted"))
    wanted = store_path("wanted")
    assert impostor.path.digest == wanted.digest
    with pytest.raises(NotFoundError, match="neither built here nor valid in the Nix store"):
        _resolver(pathinfos).closure([wanted])

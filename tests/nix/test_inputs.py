"""Finding a derivation's inputs among the paths recorded here."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.errors import NotFoundError
from builder.nix.inputs import InputResolver
from builder.nix.nix_store import NixStore
from builder.store.pathinfos.memory import MemoryPathInfoService
from builder.store.store_path import StorePath
from tests.store.infos import store_path, symlink_info
from tests.waiting import wait_for


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


def test_ingests_wait_only_for_ingests_of_the_same_paths(tmp_path: Path) -> None:
    """While one build ingests from a slow Nix, a build lacking other paths ingests
    them too, and one whose closure is recorded needs no ingest at all."""
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    # A nix-store that announces itself, then answers "nothing is valid" once released.
    tools = tmp_path / "bin"
    tools.mkdir()
    script = tools / "nix-store"
    script.write_text(
        f"#!/bin/sh\ntouch {started}/$$\n"
        f"while [ ! -e {release} ]; do sleep 0.01; done\n"
        'for arg; do case "$arg" in /nix/store/*) echo "$arg";; esac; done\n'
    )
    script.chmod(0o755)
    pathinfos = MemoryPathInfoService()
    recorded = pathinfos.put(symlink_info("recorded"))
    nix = NixStore({**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"})
    resolver = InputResolver(pathinfos, nix, MemoryBlobService(), MemoryDirectoryService())
    on_disk = [
        StorePath.parse(f"/nix/store/{entry.name}")
        for entry in os.scandir("/nix/store")
        if not entry.name.startswith(".")
    ][:2]

    def calls() -> int:
        return len(list(started.iterdir()))

    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(resolver.closure, [on_disk[0]])
        try:
            wait_for(lambda: calls() == 1, "the first ingest to ask Nix")
            second = pool.submit(resolver.closure, [on_disk[1]])
            wait_for(lambda: calls() == 2, "the second ingest to ask Nix meanwhile")
            assert pool.submit(resolver.closure, [recorded.path]).result(60) == [recorded]
            assert not first.done()
        finally:
            release.touch()
        for ingest in (first, second):
            with pytest.raises(NotFoundError, match="neither built here nor valid"):
                ingest.result(timeout=60)

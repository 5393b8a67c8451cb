"""The derivation corpus: instantiating it with Nix and building it with both builders.

Shared by the tests and the benchmark. Each run salts the derivations, so
neither builder finds earlier results in the Nix store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.executor.config import BuildConfig
from builder.executor.service import BuildService
from builder.nix.nix_store import nix_environment
from builder.nix.paths import NixPaths
from builder.nix.session import NixSession
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.results.memory import MemoryResultCache
from sandbox import Launcher

CORPUS = Path(__file__).resolve().parent / "corpus"
# Nix 2.8 aborts on an assertion instead of refusing this one, taking every
# build of the same nix-store call with it, so only our builder sees it.
OURS_ONLY = {"fixed-references"}
FILES = sorted(p.stem for p in CORPUS.glob("*.nix") if p.stem not in {"lib", *OURS_ONLY})
FAILING = {"failing", "failing-dependency", "fixed-mismatch"}
NIX_ENV = nix_environment()


def busybox_dir(parent: Path) -> Path:
    """A directory holding only a copy of the host's busybox, to import as a store path."""
    directory = parent / "busybox"
    directory.mkdir(exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", directory / "busybox")
    return directory


def instantiate(names: list[str], busybox: Path, salt: str | None = None) -> dict[str, str]:
    salt = salt or uuid.uuid4().hex[:12]
    drvs = {}
    for name in names:
        done = subprocess.run(
            ["nix-instantiate", str(CORPUS / f"{name}.nix"), "--argstr", "busyboxDir",
             str(busybox), "--argstr", "salt", salt],
            capture_output=True, text=True, env=NIX_ENV, check=True,
        )  # fmt: skip
        drvs[name] = done.stdout.strip()
    return drvs


def nix_realise(drvs: list[str], jobs: int = 2) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix-store", "--realise", "--keep-going", "-j", str(jobs), *drvs],
        capture_output=True, text=True, env=NIX_ENV, check=False,
    )  # fmt: skip


@dataclass
class OurBuilder:
    session: NixSession
    service: BuildService


@contextmanager
def our_builder(work: Path, jobs: int = 2, result_cache: bool = True) -> Iterator[OurBuilder]:
    """An in-process build service over an embedded-style store in ``work``."""
    with Launcher() as launcher:
        blobs = FsBlobService(work / "blobs")
        directories = SqliteDirectoryService(work / "directories.sqlite")
        # As `builder nix build` on one's own machine: fixed-output builds get the network.
        config = BuildConfig(
            work_dir=work / "build",
            job_slots=jobs,
            result_cache=result_cache,
            allow_network=True,
        )
        service = BuildService(config, blobs, directories, launcher, MemoryResultCache())
        pathinfos = SqlitePathInfoService(work / "pathinfo.sqlite")
        session = NixSession(service, NixPaths(pathinfos, blobs, directories, os.environ))
        try:
            yield OurBuilder(session, service)
        finally:
            service.close()
            pathinfos.close()

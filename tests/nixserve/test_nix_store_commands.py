"""Nix's own store commands against ``builder-nix-serve`` as an ``ssh://`` store.

Besides offloaded builds, Nix reaches a remote store through the same serve
protocol to copy paths there (``nix copy --to``: QueryValidPaths,
AddToStoreNar), to query it (``nix-store --store ... --query``, ``nix
path-info``: QueryPathInfos) and to fetch from it (``nix copy --from``:
DumpStorePath, whose NARs the client re-hashes against what QueryPathInfos
said). Every answer is compared with what the local Nix store holds for the
same paths.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nix.corpus import busybox_dir, instantiate
from tests.nixserve.offload import SERVE_PROGRAM, Machine, offload_environment
from tests.test_cli_build_remote import serving

pytestmark = pytest.mark.usefixtures("nix_client", "no_strays")


@pytest.fixture(scope="module", params=["embedded", "server", "handoff"])
def remote_uri(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp(f"nix-store-commands-{request.param}")
    if request.param == "embedded":
        yield Machine(str(SERVE_PROGRAM), str(tmp / "data")).uri
        return
    handoff = tmp / "handoff.sock"
    with serving(tmp, f"grpc+unix://{tmp}/builder.sock", "--nix-handoff", str(handoff)) as server:
        store = f"handoff+unix://{handoff}" if request.param == "handoff" else server.address
        yield Machine(str(SERVE_PROGRAM), store).uri


@pytest.fixture(scope="module")
def derivation(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A derivation whose closure has references: two more ``.drv`` files and busybox."""
    busybox = busybox_dir(tmp_path_factory.mktemp("nix-store-commands-busybox"))
    return instantiate(["diamond"], busybox)["diamond"]


def nix(*argv: str) -> str:
    env = offload_environment()
    env["NIX_CONFIG"] += "\nexperimental-features = nix-command\n"
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr}"
    return done.stdout


def path_infos(store: str | None, paths: list[str]) -> dict[str, tuple[str, str, set[str]]]:
    """NAR hash, NAR size and references of ``paths`` in ``store`` (the local one for None).

    ``nix-store --query`` rather than ``nix path-info``: the latter reads a
    ``.drv`` argument as a derivation to evaluate, which an ssh store cannot serve.
    """
    where = ["--store", store] if store else []

    def query(what: str, path: str) -> str:
        return nix("nix-store", *where, "--query", what, path)

    return {
        path: (
            query("--hash", path),
            query("--size", path),
            set(query("--references", path).split()),
        )
        for path in paths
    }


def requisites(store: str | None, path: str) -> set[str]:
    where = ["--store", store] if store else []
    return set(nix("nix-store", *where, "--query", "--requisites", path).split())


def test_nix_copy_to_us_then_query_agrees_with_the_local_store(
    remote_uri: str, derivation: str
) -> None:
    nix("nix", "copy", "--derivation", "--to", remote_uri, derivation)
    closure = requisites(None, derivation)
    assert len(closure) == 4
    assert requisites(remote_uri, derivation) == closure
    assert path_infos(remote_uri, sorted(closure)) == path_infos(None, sorted(closure))


def test_nix_copy_from_us_fetches_what_nix_would_store(
    remote_uri: str, derivation: str, tmp_path: Path
) -> None:
    nix("nix", "copy", "--derivation", "--to", remote_uri, derivation)
    # A source path: Nix would read a .drv argument as a derivation to evaluate,
    # which it cannot do on an ssh store.
    (source,) = [p for p in requisites(None, derivation) if not p.endswith(".drv")]
    fetched_into = str(tmp_path / "fetched")
    nix("nix", "copy", "--from", remote_uri, "--to", fetched_into, source)
    assert path_infos(fetched_into, [source]) == path_infos(None, [source])
    copy = Path(fetched_into, source.lstrip("/"), "busybox").read_bytes()
    assert copy == Path(source, "busybox").read_bytes()

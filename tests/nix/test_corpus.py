"""The corpus built by our builder and by nix-build from the same .drv files, compared.

Each derivation is built once per module: first by us (nothing is imported
into Nix), then by ``nix-store --realise``; for every deterministic derivation
the NAR hashes and references of all outputs must agree.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.nix.derivation import load_derivation
from builder.nix.nix_store import NixPathFacts, NixStore
from builder.store import nixbase32
from builder.store.path_info import PathInfo
from builder.store.store_path import StorePath
from sandbox.launcher import UID_BASE_VARIABLE, UID_COUNT_VARIABLE, UID_LOCK_DIR_VARIABLE
from tests.isolation import private_uid_base
from tests.nix.corpus import (
    FAILING,
    FILES,
    NIX_ENV,
    busybox_dir,
    instantiate,
    nix_realise,
    our_builder,
)
from tests.requirements import require_nix
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DETERMINISTIC = [name for name in FILES if name not in FAILING]


@pytest.fixture(scope="module", autouse=True)
def nix_tools() -> None:
    require_nix()


@dataclass
class Corpus:
    drvs: dict[str, str]
    ours: dict[str, list[PathInfo] | BuilderError]
    nix_log: str
    nix_facts: dict[StorePath, NixPathFacts]
    busybox: Path
    work: Path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    work = tmp_path_factory.mktemp("nix-corpus")
    busybox = busybox_dir(work)
    drvs = instantiate(FILES, busybox)
    ours: dict[str, list[PathInfo] | BuilderError] = {}
    with our_builder(work / "ours") as built:
        for name, drv in drvs.items():
            try:
                ours[name] = built.session.build(drv)
            except BuilderError as exc:
                ours[name] = exc
        nix_log = nix_realise(list(drvs.values())).stderr
        outputs = [o.path for drv in drvs.values() for o in load_derivation(drv).outputs]
        nix = NixStore(NIX_ENV)
        facts = nix.facts(nix.valid(outputs))
        yield Corpus(drvs, ours, nix_log, facts, busybox, work)


def _built(corpus: Corpus, name: str) -> list[PathInfo]:
    result = corpus.ours[name]
    if isinstance(result, BuilderError):
        pytest.fail(f"our build of {name} failed: {result}")
    return result


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_outputs_agree_with_nix(corpus: Corpus, name: str) -> None:
    ours = _built(corpus, name)
    drv = load_derivation(corpus.drvs[name])
    assert [info.path for info in ours] == [o.path for o in drv.outputs]
    for info in ours:
        theirs = corpus.nix_facts.get(info.path)
        assert theirs is not None, f"nix-build did not produce {info.path}:\n{corpus.nix_log}"
        assert nixbase32.encode(info.nar_sha256) == nixbase32.encode(theirs.nar_sha256), info.path
        assert info.nar_size == theirs.nar_size
        assert sorted(info.references) == sorted(theirs.references), info.path


def test_corpus_covers_what_it_claims(corpus: Corpus) -> None:
    drvs = {name: load_derivation(path) for name, path in corpus.drvs.items()}
    assert len(drvs) >= 12
    assert len(drvs["multi"].outputs) == 3
    assert drvs["structured"].structured_attrs() is not None
    assert "passAsFile" in drvs["pass-as-file"].environment
    assert drvs["fixed-recursive"].outputs[0].hash_algo == "r:sha256"
    refs = {info.path: info.references for info in _built(corpus, "output-refs")}
    paths = {o.name: o.path for o in drvs["output-refs"].outputs}
    out, lib = paths["out"], paths["lib"]
    assert lib in refs[out] and lib in refs[lib]
    chain = _built(corpus, "chain")[0]
    assert any(r.name == "chain-2" for r in chain.references)


def test_failing_builder_names_the_derivation(corpus: Corpus) -> None:
    error = corpus.ours["failing"]
    assert isinstance(error, BuilderError)
    assert f"builder for '{corpus.drvs['failing']}' failed" in str(error)
    assert "exited with code 3" in str(error)
    assert "about to fail" in str(error)
    assert f"builder for '{corpus.drvs['failing']}' failed with exit code 3" in corpus.nix_log


def test_failing_dependency_names_both(corpus: Corpus) -> None:
    error = str(corpus.ours["failing-dependency"])
    assert corpus.drvs["failing-dependency"] in error
    assert corpus.drvs["failing"] in error


def test_hash_mismatch_reported_like_nix(corpus: Corpus) -> None:
    error = corpus.ours["fixed-mismatch"]
    assert isinstance(error, BuilderError)
    drv = corpus.drvs["fixed-mismatch"]
    assert f"hash mismatch in fixed-output derivation '{drv}'" in str(error)
    ours = re.findall(r"(specified|got): +(\S+)", str(error))
    theirs = re.findall(r"(specified|got): +(\S+)", corpus.nix_log)
    assert ours and ours == theirs
    output = load_derivation(drv).outputs[0].path
    assert output not in corpus.nix_facts
    with our_builder(corpus.work / "ours") as built:
        assert built.session.paths.pathinfos.get(output.digest) is None


def test_fixed_outputs_in_every_algorithm(corpus: Corpus) -> None:
    drv = load_derivation(corpus.drvs["fixed-flat"])
    algos = set()
    for input_drv, _ in drv.input_derivations:
        fixed = load_derivation(str(input_drv))
        assert fixed.is_fixed_output
        algos.add(fixed.outputs[0].hash_algo)
        assert NixStore(NIX_ENV).valid([fixed.outputs[0].path])
    assert algos == {"sha1", "sha256", "sha512"}
    assert not load_derivation(corpus.drvs["fixed-flat"]).is_fixed_output


def test_export_matches_nix_store_export_byte_for_byte(corpus: Corpus) -> None:
    """A path with references and a deriver, as Nix itself built it."""
    path = load_derivation(corpus.drvs["chain"]).outputs[0].path
    theirs = subprocess.run(
        ["nix-store", "--export", str(path)], capture_output=True, env=NIX_ENV, check=True
    ).stdout
    with our_builder(corpus.work / "export") as built:
        info = built.session.build(corpus.drvs["chain"])[0]
        assert info.deriver is not None
        stream = io.BytesIO()
        built.session.paths.export([info], stream, skip_valid_in_nix=False)
        ours = stream.getvalue()
    # The closure is exported too, each path as nix-store --export writes it, ours last.
    closure = subprocess.run(
        ["nix-store", "--export", *built_closure_order(ours)],
        capture_output=True, env=NIX_ENV, check=True,
    ).stdout  # fmt: skip
    assert ours == closure
    assert ours.endswith(theirs[:-8] + b"\0" * 8)


def built_closure_order(export: bytes) -> list[str]:
    """The store paths of an export stream, in stream order."""
    marker = (0x4558494E).to_bytes(8, "little")
    paths = []
    for match in re.finditer(re.escape(marker), export):
        length = int.from_bytes(export[match.end() : match.end() + 8], "little")
        paths.append(export[match.end() + 8 : match.end() + 8 + length].decode())
    return paths


def _cli(
    *args: str, data: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "nix", *args, "--data-dir", str(data), "--jobs", "2"],
        capture_output=True, text=True, env=env or NIX_ENV, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip


def _launcher_env(lock_dir: Path) -> dict[str, str]:
    """Launchers of a call under this environment create ``lock_dir`` as they start."""
    return {
        **NIX_ENV,
        UID_BASE_VARIABLE: str(private_uid_base(4)),
        UID_COUNT_VARIABLE: "8",
        UID_LOCK_DIR_VARIABLE: str(lock_dir),
    }


def test_cli_starts_no_launcher_when_nothing_needs_building(corpus: Corpus, tmp_path: Path) -> None:
    fresh = instantiate(["chain"], corpus.busybox)["chain"]
    built = _cli("build", fresh, data=tmp_path / "data", env=_launcher_env(tmp_path / "uids-1"))
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "uids-1").is_dir()

    again = _cli("build", fresh, data=tmp_path / "data", env=_launcher_env(tmp_path / "uids-2"))
    assert again.returncode == 0, again.stderr
    assert again.stdout == built.stdout
    assert not (tmp_path / "uids-2").exists()

    # Built by Nix only: ingested from the Nix store, still without a launcher.
    from_nix = _cli(
        "build",
        corpus.drvs["chain"],
        data=tmp_path / "other",
        env=_launcher_env(tmp_path / "uids-3"),
    )
    assert from_nix.returncode == 0, from_nix.stderr
    assert from_nix.stdout.splitlines() == [
        f"{info.path} sha256:{nixbase32.encode(corpus.nix_facts[info.path].nar_sha256)}"
        for info in _built(corpus, "chain")
    ]
    assert not (tmp_path / "uids-3").exists()


def test_cli_builds_checks_and_imports_into_nix(corpus: Corpus, tmp_path: Path) -> None:
    drv = instantiate(["diamond"], corpus.busybox)["diamond"]
    output = load_derivation(drv).outputs[0].path
    built = _cli("build", drv, "--import-to-nix", data=tmp_path)
    assert built.returncode == 0, built.stderr
    line = built.stdout.strip()
    assert re.fullmatch(rf"{output} sha256:[0-9a-z]{{52}}", line)
    assert "diamond-left> " not in built.stderr
    nix = NixStore(NIX_ENV)
    facts = nix.facts([output])[output]
    assert line.endswith(nixbase32.encode(facts.nar_sha256))
    subprocess.run(["nix-store", "--verify-path", str(output)], env=NIX_ENV, check=True)
    assert {r.name for r in facts.references} == {"diamond-left", "diamond-right"}
    assert facts.deriver == StorePath.parse(drv)

    checked = _cli("build", drv, "--check", data=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{line} identical"


def test_cli_failure_exits_non_zero(corpus: Corpus, tmp_path: Path) -> None:
    failed = _cli("build", corpus.drvs["failing"], data=tmp_path)
    assert failed.returncode == 100
    assert corpus.drvs["failing"] in failed.stderr
    assert "failing> about to fail" in failed.stderr


def test_cli_builds_on_a_remote_server(corpus: Corpus, tmp_path: Path) -> None:
    socket = tmp_path / "remote.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "builder", "serve", "--listen", f"grpc+unix://{socket}",
         "--data-dir", str(tmp_path / "server")],
        env=NIX_ENV, cwd=ROOT, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            return socket.exists()

        wait_for(listening, "the server to listen")
        drv = corpus.drvs["chain"]
        built = _cli("build", drv, "--remote", f"grpc+unix://{socket}", data=tmp_path / "client")
        assert built.returncode == 0, built.stderr
        lines = built.stdout.strip().splitlines()
        expected = _built(corpus, "chain")
        assert lines == [
            f"{info.path} sha256:{nixbase32.encode(info.nar_sha256)}" for info in expected
        ]
        for info in expected:
            assert nixbase32.encode(corpus.nix_facts[info.path].nar_sha256) in built.stdout
        refused = _cli(
            "build", drv, "--check", "--remote", f"grpc+unix://{socket}", data=tmp_path / "c2"
        )
        assert refused.returncode == 2
        assert "--check builds here" in refused.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_fixed_output_with_references_refused(corpus: Corpus) -> None:
    drv = instantiate(["fixed-references"], corpus.busybox)["fixed-references"]
    with our_builder(corpus.work / "ours") as built, pytest.raises(BuilderError) as info:
        built.session.build(drv)
    assert f"illegal path references in fixed-output derivation '{drv}'" in str(info.value)
    assert re.search(r"/nix/store/[0-9a-z]{32}-busybox", str(info.value))

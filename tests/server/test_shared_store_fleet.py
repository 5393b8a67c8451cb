"""Two ``builder serve`` processes on one S3 store, each with its own near cache.

The composition is ``examples/fleet-store.toml`` pointed at a moto S3 server
and at per-server near directories, so the example is what is tested.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.materialise import materialise_node
from builder.store.store import Store
from tests.castore.backends_objectstore import new_s3_url, s3_options
from tests.store.infos import symlink_info
from tests.store.results.test_result_cache_contract import file_output, key, result
from tests.test_cli_build_remote import Server, _request_file, build, serving

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet-store.toml"
CACHED = b"answered from the result cache"


def _fleet_config(near: Path, bucket_url: str, options: dict[str, str]) -> dict[str, Any]:
    """The example with the test's bucket and credentials, and near caches in ``near``."""
    config = tomllib.loads(EXAMPLE.read_text())
    for section in config.values():
        for instance in section.values():
            if instance["type"] == "objectstore":
                instance["url"] = bucket_url
                instance["options"] = options
    config["blobservices"]["near-blobs"]["path"] = str(near / "blobs")
    config["directoryservices"]["root"]["near"] = f"sqlite://{near / 'directories.sqlite'}"
    return config


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    bucket_url, options = new_s3_url("store"), s3_options()
    with ExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            tmp = tmp_path_factory.mktemp(f"builder-{name}")
            config = tmp / "store.json"
            config.write_text(json.dumps(_fleet_config(tmp / "near", bucket_url, options)))
            servers.append(
                stack.enter_context(
                    serving(tmp, f"grpc+unix://{tmp}/builder.sock", "--store", str(config))
                )
            )
        yield servers[0], servers[1]


def test_a_build_on_one_builder_is_answered_from_the_cache_by_the_other(
    fleet: tuple[Server, Server], tmp_path: Path
) -> None:
    """The second builder finds the input the first was sent, and the first one's result."""
    first, second = fleet
    source = tmp_path / "src"
    source.mkdir()
    (source / "msg").write_text(f"input of {tmp_path.name}\n")
    script = "cat /nix/store/src/msg > /nix/store/out; echo built >> /nix/store/out"
    request = str(_request_file(tmp_path, script))
    imported = ("--import", f"src={source}")
    built = build(first.address, request, *imported, data=tmp_path / "client-a")
    assert built.returncode == 0, built.stderr
    assert b"uploaded 1 blobs" in built.stderr
    assert CACHED not in built.stderr
    out = tmp_path / "out"
    answered = build(
        second.address, request, *imported, "--out", str(out), data=tmp_path / "client-b"
    )
    assert answered.returncode == 0, answered.stderr
    assert b"uploaded 0 blobs (0 bytes) and 0 directories" in answered.stderr
    assert CACHED in answered.stderr
    assert (out / "out").read_text() == f"input of {tmp_path.name}\nbuilt\n"


def test_inputs_pathinfos_and_results_put_on_one_builder_are_found_by_the_other(
    fleet: tuple[Server, Server], tmp_path: Path
) -> None:
    first, second = fleet
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "input").write_bytes(b"uploaded to the first builder\n")
    info = symlink_info(f"fleet-{tmp_path.name}")
    recorded = result(file_output(tmp_path.name))
    with Store.open(first.address) as store:
        node = ingest_path(source, store.blobs, store.directories)
        store.pathinfos.put(info)
        store.results.put(key(tmp_path.name), recorded)
    with Store.open(second.address) as store:
        materialise_node(node, tmp_path / "copy", store.blobs, store.directories)
        assert store.pathinfos.get(info.path.digest) == info
        assert store.results.get(key(tmp_path.name)) == recorded
    assert (tmp_path / "copy" / "sub" / "input").read_bytes() == b"uploaded to the first builder\n"

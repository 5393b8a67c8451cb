"""Collection of whole stores as ``builder`` opens them: embedded, object store, in memory.

The collector's clock is set two hours ahead, so that everything the test
stored counts as older than the one-hour minimum age without waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.materialise import materialise_node
from builder.castore.nodes import DirectoryNode
from builder.castore.removal import RemovalEpoch
from builder.errors import FailedPreconditionError
from builder.gc.collector import store_collector
from builder.gc.pins import Pins
from builder.store.path_info import PathInfo
from builder.store.store import Store
from tests.store.infos import store_path

HOUR = 3600.0

SPECS = {
    "embedded": lambda tmp: None,
    "objectstore-file": lambda tmp: f"objectstore+{(tmp / 'objects').as_uri()}",
    "memory": lambda tmp: "memory://",
}


@pytest.fixture(params=sorted(SPECS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with Store.open(SPECS[request.param](tmp_path), tmp_path / "data") as opened:
        yield opened


def _tree(root: Path, tag: str, store: Store) -> DirectoryNode:
    source = root / tag
    (source / "lib").mkdir(parents=True)
    (source / "lib" / "data").write_bytes(f"data of {tag}\n".encode() * 1000)
    (source / "top").write_text(f"top of {tag}\n")
    node = ingest_path(source, store.blobs, store.directories, tag.encode())
    assert isinstance(node, DirectoryNode)
    return node


def _epoch(store: Store) -> tuple[int, int]:
    assert isinstance(store.blobs, RemovalEpoch)
    assert isinstance(store.directories, RemovalEpoch)
    return store.blobs.removal_epoch(), store.directories.removal_epoch()


def test_a_store_keeps_its_paths_and_pins_and_loses_the_rest(store: Store, tmp_path: Path) -> None:
    trees = {tag: _tree(tmp_path / "src", tag, store) for tag in ("path", "pinned", "garbage")}
    path = store_path("path")
    store.pathinfos.put(
        PathInfo(path, trees["path"].renamed(path.basename.encode()), bytes(32), 1, ())
    )
    pins = Pins(tmp_path / "pins.sqlite")
    try:
        pins.pin(trees["pinned"].digest, "kept")
        epoch = _epoch(store)
        collector = store_collector(
            store, store.results, pins, clock=lambda: time.time() + 2 * HOUR
        )
        report = collector.collect(min_age=HOUR)
    finally:
        pins.close()

    assert (report.blobs_removed, report.directories_removed) == (2, 2)
    assert report.roots_kept == 1 and report.roots_evicted == 0
    assert _epoch(store) != epoch
    (tmp_path / "out").mkdir()
    for tag in ("path", "pinned"):
        materialise_node(trees[tag], tmp_path / "out" / tag, store.blobs, store.directories)
        assert (tmp_path / "out" / tag / "top").read_text() == f"top of {tag}\n"
    assert store.directories.get(trees["garbage"].digest) is None


def test_a_remote_store_is_collected_where_it_runs(tmp_path: Path) -> None:
    with Store.open(f"grpc+unix://{tmp_path / 'nowhere.sock'}") as remote:
        pins = Pins(tmp_path / "pins.sqlite")
        try:
            with pytest.raises(FailedPreconditionError, match="where the store is"):
                store_collector(remote, remote.results, pins)
        finally:
            pins.close()

"""One collection on real backends, with the time a test controls.

Memory and SQLite backends take the clock that dates puts and uses, so age
and least-recent use are set by the test rather than by the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.collection import USE_RECORD_INTERVAL, Leases
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.materialise import materialise_node
from builder.castore.nodes import DirectoryNode, FileNode
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest, Constraints
from builder.executor.results import record_result, recorded_result
from builder.gc.collector import Collector
from builder.store.path_info import PathInfo
from builder.store.pathinfos.memory import MemoryPathInfoService
from builder.store.results.sqlite import SqliteResultCache
from tests.blob_bytes import put_bytes
from tests.store.infos import store_path

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    clock: Clock
    blobs: MemoryBlobService
    directories: MemoryDirectoryService
    results: SqliteResultCache
    pathinfos: MemoryPathInfoService
    pins: list[Digest]
    leases: Leases

    def collector(self) -> Collector:
        return Collector(
            self.blobs,
            self.directories,
            [self.results, self.pathinfos],
            lambda: list(self.pins),
            self.leases,
            self.clock,
        )

    def tree(self, tag: str, size: int = 100) -> DirectoryNode:
        """A directory of a file and a subdirectory with another file, all unique to ``tag``."""
        top = put_bytes(self.blobs, f"{tag} top ".encode().ljust(size, b"."))
        inner = put_bytes(self.blobs, f"{tag} inner ".encode().ljust(size, b"."))
        sub = Directory(files=(FileNode(b"inner", inner, size),))
        root = Directory(
            directories=(DirectoryNode(b"sub", sub.digest, sub.size),),
            files=(FileNode(b"top", top, size),),
        )
        putter = self.directories.put_multiple_start()
        putter.put(sub)
        putter.put(root)
        putter.close()
        return root.node(tag.encode())

    def record_result(self, tag: str, output: DirectoryNode) -> BuildRequest:
        request = BuildRequest(
            inputs=(),
            command_args=("/bin/true", tag),
            working_dir="build",
            scratch_paths=("build",),
            inputs_dir="nix/store",
            outputs=("out",),
            environment=(),
            constraints=Constraints(system="x86_64-linux"),
        )
        record_result(self.results, request, [CollectedOutput("out", output.renamed(b"out"), ())])
        return request

    def put_path(self, tag: str, node: DirectoryNode) -> PathInfo:
        path = store_path(tag)
        info = PathInfo(path, node.renamed(path.basename.encode()), bytes(32), 1, ())
        return self.pathinfos.put(info)

    def readable(self, node: DirectoryNode, where: Path) -> bool:
        try:
            materialise_node(node, where, self.blobs, self.directories)
        except Exception:
            return False
        return True


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = Clock()
    results = SqliteResultCache(tmp_path / "results.sqlite", clock=clock)
    try:
        yield World(
            clock,
            MemoryBlobService(clock),
            MemoryDirectoryService(clock),
            results,
            MemoryPathInfoService(clock),
            [],
            Leases(),
        )
    finally:
        results.close()


def _stored(world: World) -> set[Digest]:
    return {o.digest for o in world.blobs.stored()} | {o.digest for o in world.directories.stored()}


def test_what_no_root_reaches_goes_and_roots_stay_readable(world: World, tmp_path: Path) -> None:
    kept_result = world.tree("result")
    kept_path = world.tree("path")
    world.tree("garbage")
    world.record_result("r", kept_result)
    world.put_path("p", kept_path)
    world.clock.advance(2 * HOUR)
    before = (world.blobs.removal_epoch(), world.directories.removal_epoch())

    report = world.collector().collect(min_age=HOUR)

    assert (report.blobs_removed, report.directories_removed) == (2, 2)
    assert report.roots_evicted == 0
    assert report.blob_bytes_freed == 200
    assert report.store_bytes_after == report.store_bytes_before - report.blob_bytes_freed - (
        report.directory_bytes_freed
    )
    assert (world.blobs.removal_epoch(), world.directories.removal_epoch()) != before
    assert world.readable(kept_result, tmp_path / "result")
    assert world.readable(kept_path, tmp_path / "path")
    assert len(_stored(world)) == 8


def test_objects_younger_than_the_minimum_age_stay(world: World, tmp_path: Path) -> None:
    world.tree("old")
    world.clock.advance(2 * HOUR)
    young = world.tree("young")
    world.clock.advance(HOUR - 1)
    report = world.collector().collect(max_bytes=0, min_age=HOUR)
    assert report.blobs_removed == 2
    assert world.readable(young, tmp_path / "young")


def test_a_stored_directory_keeps_old_objects_it_refers_to(world: World, tmp_path: Path) -> None:
    """A client may upload a new tree around blobs the store had long had."""
    old = world.tree("old")
    world.clock.advance(2 * HOUR)
    around = Directory(directories=(DirectoryNode(b"old", old.digest, old.size),))
    world.directories.put(around)
    world.collector().collect(min_age=HOUR)
    assert world.readable(around.node(b"around"), tmp_path / "around")


def test_roots_are_evicted_least_recently_used_first(world: World, tmp_path: Path) -> None:
    trees = {tag: world.tree(tag) for tag in ("first", "second", "third", "fourth")}
    requests = {}
    for tag in ("first", "second"):
        requests[tag] = world.record_result(tag, trees[tag])
        world.clock.advance(USE_RECORD_INTERVAL)
    infos = {}
    for tag in ("third", "fourth"):
        infos[tag] = world.put_path(tag, trees[tag])
        world.clock.advance(USE_RECORD_INTERVAL)
    # Use the oldest two again: "second" and "third" become the least recently used.
    assert recorded_result(world.results, requests["first"]) is not None
    world.clock.advance(USE_RECORD_INTERVAL)
    assert world.pathinfos.get(infos["fourth"].path.digest) is not None
    world.clock.advance(2 * HOUR)

    stored = world.collector().collect(min_age=HOUR).store_bytes_before
    per_tree = stored // 4
    report = world.collector().collect(max_bytes=2 * per_tree, min_age=HOUR)

    assert report.roots_evicted == 2 and report.roots_kept == 2
    assert report.store_bytes_after == 2 * per_tree
    assert world.readable(trees["first"], tmp_path / "first")
    assert world.readable(trees["fourth"], tmp_path / "fourth")
    assert not world.readable(trees["second"], tmp_path / "second")
    assert not world.readable(trees["third"], tmp_path / "third")
    assert recorded_result(world.results, requests["second"]) is None
    assert world.pathinfos.get(infos["third"].path.digest) is None
    assert recorded_result(world.results, requests["first"]) is not None


def test_a_root_reaching_shared_objects_counts_them_once(world: World) -> None:
    shared = world.tree("shared")
    world.record_result("one", shared)
    world.clock.advance(USE_RECORD_INTERVAL)
    world.put_path("two", shared)
    world.clock.advance(2 * HOUR)
    size = world.collector().collect(min_age=HOUR).store_bytes_after
    report = world.collector().collect(max_bytes=size, min_age=HOUR)
    assert report.roots_evicted == 0 and report.store_bytes_after == size


def test_pins_and_leases_survive_any_bound(world: World, tmp_path: Path) -> None:
    pinned, leased, rooted = world.tree("pinned"), world.tree("leased"), world.tree("rooted")
    blob = put_bytes(world.blobs, b"a pinned blob")
    world.put_path("rooted", rooted)
    world.pins.extend([pinned.digest, blob])
    world.clock.advance(2 * HOUR)
    with world.leases.hold([leased]):
        report = world.collector().collect(max_bytes=0, min_age=HOUR)
    assert report.roots_evicted == 1
    assert world.readable(pinned, tmp_path / "pinned")
    assert world.readable(leased, tmp_path / "leased")
    assert world.blobs.has(blob)
    assert not world.readable(rooted, tmp_path / "rooted")


def test_leases_taken_after_the_mark_are_handed_to_the_next_batch(world: World) -> None:
    """What a collector learns of builds that register their inputs while it sweeps."""
    early, late = world.tree("early"), world.tree("late")
    with world.leases.hold([early]):
        assert world.leases.reset() == [early]
        with world.leases.hold([late]):
            with world.leases.frozen() as leased:
                assert leased == [late]
            with world.leases.frozen() as leased:
                assert leased == []
        assert world.leases.reset() == [early]
    assert world.leases.reset() == []


def test_a_directory_stored_during_the_collection_keeps_what_it_names(
    world: World, tmp_path: Path
) -> None:
    """A tree uploaded while a collection runs may name old objects it did not upload again."""
    old = world.tree("old")
    world.clock.advance(2 * HOUR)
    around = Directory(directories=(DirectoryNode(b"old", old.digest, old.size),))

    def pinned_while_a_client_uploads() -> list[Digest]:
        # Asked once the store has been listed: the upload lands after the listing.
        world.directories.put(around)
        return []

    collector = Collector(
        world.blobs, world.directories, [], pinned_while_a_client_uploads, clock=world.clock
    )
    report = collector.collect(min_age=HOUR)
    assert (report.blobs_removed, report.directories_removed) == (0, 0)
    assert world.readable(around.node(b"around"), tmp_path / "around")

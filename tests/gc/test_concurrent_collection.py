"""Collections running while clients upload inputs and builds run on them, in real threads.

The embedded store (fs blobs, SQLite directories) of a real build service
with a real sandbox launcher. Before the run, part of the store is aged by
two hours (file times and the directory rows' dates set back), which is what
an hour's minimum age then lets collections remove. Every collection is
bounded to zero bytes, so nothing survives but what is pinned, leased to a
build in progress, or younger than the minimum age: the uploads of the
workers must survive all the same, and every build must succeed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.materialise import materialise_node
from builder.castore.nodes import DirectoryNode, Node
from builder.executor.config import BuildConfig
from builder.executor.request import BuildRequest, Constraints
from builder.executor.service import BuildService
from builder.gc.collector import CollectionReport, store_collector
from builder.gc.pins import Pins
from builder.store.store import Store
from sandbox import Launcher
from tests.requirements import require_root
from tests.waiting import wait_for

HOUR = 3600.0
WORKERS = 2
BUILDS_PER_WORKER = 4


@pytest.fixture(scope="module")
def launcher() -> Iterator[Launcher]:
    require_root("the sandbox launcher runs builds as build users")
    with Launcher() as started:
        yield started


def _tree(root: Path, tag: str, store: Store) -> DirectoryNode:
    source = root / tag
    (source / "lib").mkdir(parents=True)
    (source / "lib" / "data").write_text(f"data of {tag}\n")
    (source / "top").write_text(f"top of {tag}\n")
    node = ingest_path(source, store.blobs, store.directories, tag.encode())
    assert isinstance(node, DirectoryNode)
    return node


def _age(data_dir: Path, seconds: float) -> None:
    """Date everything stored so far ``seconds`` earlier, as if it had been stored then."""
    blobs = data_dir / "blobs"
    for shard in blobs.iterdir():
        if len(shard.name) == 2:
            for blob in shard.iterdir():
                status = blob.stat()
                os.utime(blob, (status.st_atime - seconds, status.st_mtime - seconds))
    conn = sqlite3.connect(data_dir / "directories.sqlite")
    with conn:
        conn.execute("UPDATE directories SET stored_at = stored_at - ?", (seconds,))
    conn.close()


def _request(inputs: tuple[Node, ...], tag: str) -> BuildRequest:
    return BuildRequest(
        inputs=inputs,
        command_args=(
            "/bin/sh",
            "-c",
            f"cat /nix/store/*/lib/data /nix/store/*/top > /nix/store/{tag}",
        ),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=(f"nix/store/{tag}",),
        environment=(("PATH", b"/bin"),),
        constraints=Constraints(system="x86_64-linux", provide_bin_sh=True),
    )


def test_uploads_and_builds_survive_collections_running_beside_them(
    tmp_path: Path, launcher: Launcher
) -> None:
    data_dir = tmp_path / "data"
    with Store.open(None, data_dir) as store:
        shared = _tree(tmp_path / "src", "aaa-shared", store)
        garbage = _tree(tmp_path / "src", "garbage", store)
        _age(data_dir, 2 * HOUR)
        pins = Pins(data_dir / "pins.sqlite")
        pins.pin(shared.digest, "shared input")
        builds = BuildService(
            BuildConfig(work_dir=data_dir / "build"),
            store.blobs,
            store.directories,
            launcher,
            store.results,
        )
        try:
            collector = store_collector(store, builds.results, pins, builds.leases)
            reports: list[CollectionReport] = []
            done = threading.Event()
            failures: list[BaseException] = []
            outputs: list[tuple[str, Node]] = []

            def collect() -> None:
                while not done.is_set() or len(reports) < 2:
                    reports.append(collector.collect(max_bytes=0, min_age=HOUR))

            def work(worker: int) -> None:
                try:
                    for i in range(BUILDS_PER_WORKER):
                        # Each round uploads its own input, then builds on it at once.
                        own = _tree(tmp_path / f"src-{worker}-{i}", f"own-{worker}-{i}", store)
                        tag = f"out-{worker}-{i}"
                        outcome = builds.build(_request((shared, own), tag))
                        outputs.append((tag, outcome.outputs[0].node))
                except BaseException as error:
                    failures.append(error)

            collecting = threading.Thread(target=collect)
            collecting.start()
            wait_for(lambda: reports, what="the first collection")
            workers = [threading.Thread(target=work, args=(n,)) for n in range(WORKERS)]
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
            done.set()
            collecting.join()
        finally:
            builds.close()
            pins.close()

        assert not failures, failures
        assert len(outputs) == WORKERS * BUILDS_PER_WORKER
        assert len(reports) >= 2
        assert store.directories.get(garbage.digest) is None
        assert sum(r.directories_removed for r in reports) >= 2
        out = tmp_path / "out"
        out.mkdir()
        materialise_node(shared, out / "shared", store.blobs, store.directories)
        for tag, node in outputs:
            materialise_node(node, out / tag, store.blobs, store.directories)
            worker_round = tag.removeprefix("out-")
            assert (out / tag).read_text().endswith(f"top of own-{worker_round}\n")

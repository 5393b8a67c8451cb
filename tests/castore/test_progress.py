"""What ingests and copies report to a progress watcher, against what they actually did."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from builder.castore.blobs.batches import SMALL_BLOB_SIZE
from builder.castore.blobs.fs import FsBlobService
from builder.castore.copying import copy_missing
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs import fetch_closure
from builder.castore.fs.import_record import RACY_WINDOW_NS, ImportRecord
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode
from tests.castore.test_copying import castore, make_tree
from tests.waiting import wait_for


class Recorder:
    """Keeps every report, so totals and their order can be checked."""

    def __init__(self) -> None:
        self.plans: list[tuple[int, int, int]] = []
        self.steps: list[tuple[int, int]] = []

    def planned(self, files: int, size: int, present: int) -> None:
        self.plans.append((files, size, present))

    def advanced(self, files: int, size: int) -> None:
        assert files >= 0 and size >= 0
        self.steps.append((files, size))

    @property
    def files(self) -> int:
        return sum(files for files, _ in self.steps)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.steps)


def _tree_files(root: Path) -> tuple[int, int]:
    sizes = [
        os.path.getsize(os.path.join(where, name))
        for where, _, names in os.walk(root)
        for name in names
        if not os.path.islink(os.path.join(where, name))
    ]
    return len(sizes), sum(sizes)


def _aged(root: Path) -> None:
    """Wait until every file is older than the record's racy window, so that it is recorded."""
    newest = max(
        os.lstat(os.path.join(where, name)).st_ctime_ns
        for where, _, names in os.walk(root)
        for name in names
    )
    wait_for(lambda: time.time_ns() - newest > RACY_WINDOW_NS, "the files to age")


def test_an_ingest_reports_every_file_and_byte_in_batches(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    os.symlink("d0", tree / "link")
    blobs = FsBlobService(tmp_path / "blobs")
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    try:
        recorder = Recorder()
        ingest_path(tree, blobs, directories, progress=recorder)
        assert (recorder.files, recorder.size) == _tree_files(tree)
        assert recorder.plans == [], "an ingest cannot know its total ahead"
        assert len(recorder.steps) < recorder.files, "reported per batch, not per file"

        single = Recorder()
        ingest_path(tree / "large", blobs, directories, progress=single)
        assert single.steps == [(1, SMALL_BLOB_SIZE + 12345)]
    finally:
        directories.close()


def test_files_taken_from_the_import_record_count_as_well(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    _aged(tree)
    blobs = FsBlobService(tmp_path / "blobs")
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    record = ImportRecord(tmp_path / "imports.sqlite")
    try:
        ingest_path(tree, blobs, directories, record=record)
        again = Recorder()
        ingest_path(tree, blobs, directories, record=record, progress=again)
        assert (again.files, again.size) == _tree_files(tree)
        # Recorded files are settled per directory as the walk lists it, never on the pool.
        assert sorted(files for files, _ in again.steps) == [1, 1, 2, 30, 30, 30, 30]
    finally:
        record.close()
        directories.close()


PAIRS = [("fs-sqlite", "grpc"), ("grpc", "memory")]


@pytest.mark.parametrize(("source_kind", "target_kind"), PAIRS)
def test_a_copy_plans_what_is_missing_and_reports_it_all(
    source_kind: str, target_kind: str, tmp_path: Path
) -> None:
    (tmp_path / "tree").mkdir()
    make_tree(tmp_path / "tree")
    with ExitStack() as stack:
        source = stack.enter_context(castore(source_kind, tmp_path / "source"))
        target = stack.enter_context(castore(target_kind, tmp_path / "target"))
        root = ingest_path(tmp_path / "tree", source.blobs, source.directories)
        assert isinstance(root, DirectoryNode)
        closure = fetch_closure(root.digest, source.directories)
        blobs = {f.digest: f.size for d in closure.values() for f in d.files}

        first = Recorder()
        copied = copy_missing([root], source, target, first)
        assert first.plans == [(len(blobs), sum(blobs.values()), 0)]
        assert (first.files, first.size) == (copied.blobs, copied.bytes)
        assert (copied.blobs, copied.bytes) == (len(blobs), sum(blobs.values()))
        large = SMALL_BLOB_SIZE + 12345
        assert (0, large) in first.steps or (1, large) in first.steps, first.steps

        again = Recorder()
        copy_missing([root], source, target, again)
        assert again.plans == [(0, 0, len(blobs))]
        assert again.steps == []

"""The import record: unchanged files are taken from it, and every kind of change is seen.

Files are only recorded once their stamps are older than the racy window, so
the trees these tests change are written once for the module and left to age
past it (a wait on the clock, not on luck). Each test owns one of those trees.
The same-tick test needs a filesystem whose timestamps are coarse enough to
make a change within one tick happen for certain: ext4 without extra inode
space keeps whole seconds, so one is mounted from a small image (root is
required, and its absence is a failure, not a skip).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.digest import Digest
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.fs.import_record import MAX_UNUSED_SECONDS, RACY_WINDOW_NS, ImportRecord
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from builder.errors import InvalidArgumentError
from tests.requirements import require_root
from tests.waiting import wait_for

TREES = (
    "unchanged",
    "same_size",
    "size",
    "replaced",
    "ctime_only",
    "chmod",
    "blob_removed",
    "symlink",
    "pruned",
    "single_file",
    "failing",
    "kept_in_use",
    "left_unused",
    "collected",
)
FILES = {b"alpha": b"alpha contents\n", b"bravo": b"bravo contents\n"}
NESTED = {b"charlie": b"charlie contents\n"}


def _digest(data: bytes) -> Digest:
    return Digest(blake3.blake3(data).digest())


def _write_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for name, data in FILES.items():
        (root / os.fsdecode(name)).write_bytes(data)
    for name, data in NESTED.items():
        (root / "sub" / os.fsdecode(name)).write_bytes(data)
    (root / "alpha").chmod(0o755)


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tree per test, all older than the racy window."""
    base = tmp_path_factory.mktemp("aged")
    for name in TREES:
        _write_tree(base / name)
    newest = max(os.lstat(os.path.join(d, f)).st_ctime_ns for d, _, fs in os.walk(base) for f in fs)
    wait_for(
        lambda: time.time_ns() - newest > RACY_WINDOW_NS,
        "the trees to age past the racy window",
    )
    return base


class Importer:
    """An fs blob store with its import record, counting what each import found recorded."""

    def __init__(self, root: Path) -> None:
        self.blobs = FsBlobService(root / "blobs")
        self.directories = MemoryDirectoryService()
        self.record = ImportRecord(root / "imports.sqlite")

    def ingest(self, path: Path) -> tuple[Node, int]:
        """The root node, and how many files were taken from the record."""
        before = self.record.hits
        node = ingest_path(path, self.blobs, self.directories, record=self.record)
        return node, self.record.hits - before

    def files(self, node: Node) -> dict[bytes, FileNode]:
        """Every file of a tree by its path below the root."""
        assert isinstance(node, DirectoryNode)
        found = {}
        pending = [(b"", node.digest)]
        while pending:
            prefix, digest = pending.pop()
            directory = self.directories.get(digest)
            assert directory is not None
            found.update({prefix + file.name: file for file in directory.files})
            pending.extend((prefix + d.name + b"/", d.digest) for d in directory.directories)
        return found

    def close(self) -> None:
        self.record.close()
        self.blobs.close()


@pytest.fixture
def importer(tmp_path: Path) -> Iterator[Importer]:
    opened = Importer(tmp_path)
    yield opened
    opened.close()


def _check_contents(importer: Importer, node: Node, root: Path) -> None:
    """Every file's node says what is on disk now, and its blob is stored."""
    for name, file in importer.files(node).items():
        data = (root / os.fsdecode(name)).read_bytes()
        assert file.digest == _digest(data), name
        assert file.size == len(data)
        assert importer.blobs.has(file.digest)


def test_an_unchanged_tree_is_taken_from_the_record(aged: Path, importer: Importer) -> None:
    tree = aged / "unchanged"
    first, hits = importer.ingest(tree)
    assert hits == 0
    again, hits = importer.ingest(tree)
    assert hits == 3
    assert again == first
    assert importer.files(again)[b"alpha"].executable
    assert not importer.files(again)[b"bravo"].executable


def test_an_unchanged_file_is_taken_from_the_record(aged: Path, importer: Importer) -> None:
    path = aged / "single_file" / "alpha"
    first, hits = importer.ingest(path)
    assert hits == 0
    again, hits = importer.ingest(path)
    assert (again, hits) == (first, 1)
    assert again == FileNode(b"alpha", _digest(FILES[b"alpha"]), len(FILES[b"alpha"]), True)


def test_a_change_of_contents_with_the_same_size_is_seen(aged: Path, importer: Importer) -> None:
    tree = aged / "same_size"
    importer.ingest(tree)
    (tree / "bravo").write_bytes(b"BRAVO CONTENTS\n")
    node, hits = importer.ingest(tree)
    assert hits == 2
    _check_contents(importer, node, tree)


def test_a_change_of_size_is_seen(aged: Path, importer: Importer) -> None:
    tree = aged / "size"
    importer.ingest(tree)
    with open(tree / "sub" / "charlie", "ab") as appended:
        appended.write(b"more\n")
    node, hits = importer.ingest(tree)
    assert hits == 2
    _check_contents(importer, node, tree)


def test_a_replaced_file_is_seen_even_with_the_old_stamps(aged: Path, importer: Importer) -> None:
    """A new inode misses though size and mtime are those the old file had."""
    tree = aged / "replaced"
    importer.ingest(tree)
    old = os.stat(tree / "bravo")
    replacement = tree / "bravo.new"
    replacement.write_bytes(b"bravo CONTENTS\n")
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, tree / "bravo")
    new = os.stat(tree / "bravo")
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert new.st_ino != old.st_ino
    node, hits = importer.ingest(tree)
    assert hits == 2
    _check_contents(importer, node, tree)


def test_a_rewrite_with_mtime_put_back_is_seen_by_its_ctime(aged: Path, importer: Importer) -> None:
    """Only ctime shows this change: same inode, same size, mtime restored."""
    tree = aged / "ctime_only"
    importer.ingest(tree)
    old = os.stat(tree / "sub" / "charlie")
    (tree / "sub" / "charlie").write_bytes(b"CHARLIE contents\n")
    os.utime(tree / "sub" / "charlie", ns=(old.st_atime_ns, old.st_mtime_ns))
    new = os.stat(tree / "sub" / "charlie")
    assert (new.st_ino, new.st_size, new.st_mtime_ns) == (old.st_ino, old.st_size, old.st_mtime_ns)
    node, hits = importer.ingest(tree)
    assert hits == 2
    _check_contents(importer, node, tree)


def test_a_chmod_touches_ctime_and_the_file_is_hashed_again(aged: Path, importer: Importer) -> None:
    tree = aged / "chmod"
    first, _ = importer.ingest(tree)
    (tree / "bravo").chmod(0o755)
    node, hits = importer.ingest(tree)
    assert hits == 2
    assert importer.files(node)[b"bravo"].executable
    (tree / "bravo").chmod(0o644)
    again, hits = importer.ingest(tree)
    assert hits == 2
    assert again == first


def test_a_blob_removed_from_the_store_is_stored_again(aged: Path, importer: Importer) -> None:
    tree = aged / "blob_removed"
    first, _ = importer.ingest(tree)
    removed = _digest(FILES[b"bravo"])
    os.unlink(importer.blobs.local_path(removed))
    assert not importer.blobs.has(removed)
    node, hits = importer.ingest(tree)
    assert hits == 2
    assert node == first
    assert importer.blobs.has(removed)
    _check_contents(importer, node, tree)


def test_a_file_swapped_for_a_symlink_to_a_recorded_file_is_not_followed(
    aged: Path, importer: Importer
) -> None:
    """Followed, the link would show the recorded stamps of its target; it is stored as a link."""
    tree = aged / "symlink"
    importer.ingest(tree)
    os.unlink(tree / "bravo")
    os.symlink("alpha", tree / "bravo")
    node, hits = importer.ingest(tree)
    assert hits == 2
    assert isinstance(node, DirectoryNode)
    top = importer.directories.get(node.digest)
    assert top is not None
    assert top.symlinks == (SymlinkNode(b"bravo", b"alpha"),)
    assert b"bravo" not in importer.files(node)
    _check_contents(importer, node, tree)


def test_a_pruned_record_hashes_again_and_records_anew(aged: Path, importer: Importer) -> None:
    tree = aged / "pruned"
    first, _ = importer.ingest(tree)
    assert importer.record.prune(0) == 3
    again, hits = importer.ingest(tree)
    assert (again, hits) == (first, 0)
    _, hits = importer.ingest(tree)
    assert hits == 3


def test_entries_unused_for_long_are_dropped_when_the_record_is_next_written(
    aged: Path, importer: Importer, tmp_path: Path
) -> None:
    """Entries an import finds are marked used again; the others age out."""
    kept, unused = aged / "kept_in_use", aged / "left_unused"
    importer.ingest(kept)
    importer.ingest(unused)
    long_ago = int(time.time()) - MAX_UNUSED_SECONDS - 60
    with sqlite3.connect(tmp_path / "imports.sqlite") as database:
        database.execute("UPDATE imported_files SET used = ?", (long_ago,))
    (kept / "bravo").write_bytes(b"changed, so the import writes\n")
    _, hits = importer.ingest(kept)
    assert hits == 2
    _, hits = importer.ingest(unused)
    assert hits == 0
    _, hits = importer.ingest(kept)
    assert hits == 2


def test_a_file_written_within_the_racy_window_is_hashed_again(
    tmp_path: Path, importer: Importer
) -> None:
    """Its stamps could not show a change made in the same tick, so it is not recorded yet."""
    tree = tmp_path / "fresh"
    _write_tree(tree)
    first, _ = importer.ingest(tree)
    again, hits = importer.ingest(tree)
    assert (again, hits) == (first, 0)


@pytest.fixture
def whole_second_fs(tmp_path: Path) -> Iterator[Path]:
    """A mounted ext4 whose 128-byte inodes keep timestamps in whole seconds."""
    require_root("mounting a filesystem with one-second timestamps")
    image = tmp_path / "seconds.img"
    with open(image, "wb") as created:
        created.truncate(16 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True
    )
    mountpoint = tmp_path / "seconds"
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def _stamps(path: Path) -> tuple[int, int, int, int, int]:
    status = os.lstat(path)
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def test_a_change_within_the_same_timestamp_tick_is_not_missed(
    whole_second_fs: Path, importer: Importer
) -> None:
    """A rewrite in the second of the import leaves every stamp as it was; it is still seen.

    Each attempt starts just after a second begins, so writing, importing and
    rewriting a small file normally share that second; an attempt where they
    did not (the stamps moved) proves nothing and is made again.
    """
    tree = whole_second_fs / "tree"
    tree.mkdir()
    path = tree / "file"
    for attempt in range(5):
        wait_for(lambda: time.time() % 1 < 0.1, "the start of a second")
        path.write_bytes(b"first %d\n" % attempt)
        before = _stamps(path)
        assert before[3] % 1_000_000_000 == 0, "the filesystem should keep whole seconds"
        first, _ = importer.ingest(tree)
        path.write_bytes(b"other %d\n" % attempt)
        if _stamps(path) != before:
            continue
        again, _ = importer.ingest(tree)
        assert first != again
        _check_contents(importer, again, tree)
        return
    pytest.fail("no attempt rewrote the file within the second it was imported in")


def test_an_import_that_fails_records_nothing(aged: Path, importer: Importer) -> None:
    """Entries are written only once the import's blobs are stored, so none names a lost blob."""
    tree = aged / "failing"
    os.mkfifo(tree / "sub" / "pipe")
    with pytest.raises(InvalidArgumentError, match="a FIFO"):
        importer.ingest(tree)
    assert importer.record.prune(0) == 0
    os.unlink(tree / "sub" / "pipe")
    importer.ingest(tree)
    assert importer.record.prune(0) == 3


def test_a_file_taken_from_the_record_keeps_its_blob_from_a_racing_collection(
    aged: Path, importer: Importer
) -> None:
    """An import that finds a blob stored dates it now, as a put would, or stores it anew."""
    tree = aged / "collected"
    first, _ = importer.ingest(tree)
    digests = [file.digest for file in importer.files(first).values()]
    cutoff = time.time() - 10
    for digest in digests:
        os.utime(importer.blobs.local_path(digest), (cutoff - 10, cutoff - 10))
    again, hits = importer.ingest(tree)
    assert (again, hits) == (first, 3)
    assert importer.blobs.remove_untouched(digests, before=cutoff) == []
    _check_contents(importer, again, tree)

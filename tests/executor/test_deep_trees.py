"""Build-side walkers on trees a build chose: deeper than the recursion limit and
PATH_MAX, with read-only and unreadable directories and symlinks out of the tree."""

from __future__ import annotations

import os
import stat
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode
from builder.executor.matcache.cache import TREES_DIR, MaterialisationCache
from builder.executor.outputs import export_outputs, scan_needles
from builder.executor.removal import remove_tree
from tests.castore.test_deep_trees import few_descriptors
from tests.deep_trees import DEPTH, NEEDLE, at_bottom, depth_of, make_deep_tree
from tests.requirements import require_root

UNPRIVILEGED = 64124


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deep"
    make_deep_tree(root)
    yield root
    remove_tree(root)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[FsBlobService, SqliteDirectoryService]]:
    directories = SqliteDirectoryService(tmp_path / "d.db")
    yield FsBlobService(tmp_path / "blobs"), directories
    directories.close()


def test_refscan_finds_needles_at_the_bottom(deep: Path) -> None:
    with few_descriptors():
        found = scan_needles(deep, ("absent", NEEDLE.decode(), "../../../top"))
    assert found == (1, 2)


def test_remove_tree_removes_a_deep_tree(deep: Path) -> None:
    with at_bottom(deep) as bottom:
        os.chmod(bottom, 0o500)
    with few_descriptors():
        remove_tree(deep)
    assert not os.path.lexists(deep)


def test_ten_thousand_levels_with_few_descriptors(
    tmp_path: Path, stores: tuple[FsBlobService, SqliteDirectoryService]
) -> None:
    root = tmp_path / "deeper"
    try:
        make_deep_tree(root, 10_000)
        with few_descriptors():
            node = ingest_path(root, *stores)
            assert scan_needles(root, (NEEDLE.decode(),)) == (0,)
            remove_tree(root)
        assert isinstance(node, DirectoryNode)
        assert not os.path.lexists(root)
    finally:
        remove_tree(root)


def test_export_of_a_deep_output(
    deep: Path, tmp_path: Path, stores: tuple[FsBlobService, SqliteDirectoryService]
) -> None:
    node = ingest_path(deep, *stores, b"out")
    out = tmp_path / "exported"
    try:
        with few_descriptors():
            export_outputs([node], out, *stores)
            export_outputs([node], out, *stores)
        assert depth_of(out / "out") == DEPTH
        with at_bottom(out / "out") as bottom:
            assert os.stat("bottom", dir_fd=bottom, follow_symlinks=False).st_mtime == 1
            assert os.stat(".", dir_fd=bottom).st_mtime == 1
        assert sorted(os.listdir(out)) == ["out"]
    finally:
        remove_tree(out)


def test_matcache_fills_evicts_and_adopts_a_deep_tree(
    deep: Path, tmp_path: Path, stores: tuple[FsBlobService, SqliteDirectoryService]
) -> None:
    node = ingest_path(deep, *stores)
    assert isinstance(node, DirectoryNode)
    try:
        _fill_adopt_evict(node, tmp_path / "cache", stores)
    finally:
        remove_tree(tmp_path / "cache")


def _fill_adopt_evict(
    node: DirectoryNode, root: Path, stores: tuple[FsBlobService, SqliteDirectoryService]
) -> None:
    cache = MaterialisationCache(root, *stores, max_bytes=1 << 30)
    with few_descriptors(), cache.acquire(node) as acquired:
        assert acquired.host_path is not None
        assert depth_of(acquired.host_path) == DEPTH
    used = cache.stats().bytes_used
    cache.close()
    with few_descriptors():
        adopted = MaterialisationCache(root, *stores, max_bytes=1 << 30)
    assert adopted.stats().bytes_used == used
    adopted.close()
    with few_descriptors():
        evicting = MaterialisationCache(root, *stores, max_bytes=0)
    assert os.listdir(root / TREES_DIR) == []
    assert evicting.stats().trees == 0
    evicting.close()


def _run_as(uid: int, action: str, path: Path) -> int:
    """Run ``remove_tree(path)`` in a child that has dropped root; its exit status.

    Root may write into read-only directories; an ordinary user (a rootless
    server, ``builder run``) may not, which is what the mode fix-ups are for.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if action == "remove":
                remove_tree(path)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _chown_tree(root: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory other uids can reach (pytest's own lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="removal-tests-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    remove_tree(path)


def test_remove_tree_fixes_modes_and_never_follows_symlinks(reachable: Path) -> None:
    require_root("dropping to another uid")
    tmp_path = reachable
    canary = tmp_path / "canary"
    (canary / "inner").mkdir(parents=True)
    (canary / "inner" / "keep").write_bytes(b"keep me")
    # The work directory's parent is the remover's, as a server's builds directory is.
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, UNPRIVILEGED, UNPRIVILEGED)
    work = home / "work"
    (work / "locked" / "deeper").mkdir(parents=True)
    (work / "locked" / "deeper" / "file").write_bytes(b"x")
    (work / "readonly" / "sub").mkdir(parents=True)
    (work / "readonly" / "sub" / "file").write_bytes(b"y")
    (work / "readonly" / "to-canary").symlink_to(canary)
    (work / "readonly" / "sub" / "to-inner").symlink_to(canary / "inner")
    (work / "readonly" / "sub" / "to-keep").symlink_to(canary / "inner" / "keep")
    _chown_tree(canary, UNPRIVILEGED)
    _chown_tree(work, UNPRIVILEGED)
    # The canary is the user's too, so only not following keeps it unchanged.
    for path, mode in ((canary / "inner", 0o500), (canary, 0o500)):
        path.chmod(mode)
    (canary / "inner" / "keep").chmod(0o400)
    (work / "locked" / "deeper").chmod(0o000)
    (work / "locked").chmod(0o000)
    (work / "readonly" / "sub").chmod(0o500)
    (work / "readonly").chmod(0o500)
    work.chmod(0o500)
    before = {p: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in [canary, *canary.rglob("*")]}

    assert _run_as(UNPRIVILEGED, "remove", work) == 0

    assert not os.path.lexists(work)
    after = {p: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in [canary, *canary.rglob("*")]}
    assert after == before
    assert stat.S_IMODE(canary.stat().st_mode) == 0o500
    assert (canary / "inner" / "keep").read_bytes() == b"keep me"
    canary.chmod(0o700)
    (canary / "inner").chmod(0o700)


def test_remove_tree_of_nothing_and_of_a_symlink(tmp_path: Path) -> None:
    remove_tree(tmp_path / "absent")
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_bytes(b"k")
    (tmp_path / "link").symlink_to(target)
    remove_tree(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link")
    assert (target / "kept").read_bytes() == b"k"

"""Work trees removed after their build has answered: all of them, in order, failures logged."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from builder.executor.removal import DeferredRemoval


def _tree(root: Path, name: str) -> Path:
    tree = root / name
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "file").write_bytes(b"x")
    (tree / "bin" / "link").symlink_to("/" + "long" * 20)
    (tree / "bin").chmod(0o500)
    return tree


def _removal_threads() -> int:
    return sum(thread.name == "tree-removal" for thread in threading.enumerate())


def test_trees_are_removed_in_order_and_each_is_reported(tmp_path: Path) -> None:
    before = _removal_threads()
    removal = DeferredRemoval(backlog=2)
    # Nothing runs until there is something to remove (the owner may spawn first).
    assert _removal_threads() == before
    done: list[tuple[str, bool]] = []
    trees = [_tree(tmp_path, f"t{i}") for i in range(5)]
    try:
        for tree in trees:
            removal.remove(tree, lambda t=tree: done.append((t.name, t.exists())))
        removal.wait()
        assert done == [(f"t{i}", False) for i in range(5)]
        assert list(tmp_path.iterdir()) == []
    finally:
        removal.close()
    assert _removal_threads() == before


def test_a_failed_removal_is_logged_and_the_next_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    removal = DeferredRemoval(backlog=1)
    released: list[str] = []
    unremovable = tmp_path / ("n" * 300)  # longer than any file name may be
    kept = _tree(tmp_path, "after")
    try:
        with caplog.at_level(logging.WARNING, logger="builder.executor.removal"):
            removal.remove(unremovable, lambda: released.append("unremovable"))
            removal.remove(kept, lambda: released.append("after"))
            removal.wait()
    finally:
        removal.close()
    assert released == ["unremovable", "after"]
    assert not kept.exists()
    assert any("could not remove" in r.getMessage() for r in caplog.records)


def test_close_finishes_what_is_queued(tmp_path: Path) -> None:
    removal = DeferredRemoval(backlog=4)
    trees = [_tree(tmp_path, f"t{i}") for i in range(4)]
    for tree in trees:
        removal.remove(tree, lambda: None)
    removal.close()
    assert list(tmp_path.iterdir()) == []
    removal.close()


def test_callers_past_a_full_backlog_go_on_once_there_is_room(tmp_path: Path) -> None:
    removal = DeferredRemoval(backlog=1)
    first_done = threading.Event()
    let_first_finish = threading.Event()

    def hold() -> None:
        first_done.set()
        let_first_finish.wait()

    queued: list[str] = []
    try:
        removal.remove(_tree(tmp_path, "first"), hold)
        first_done.wait()
        # The thread is held inside the first removal's report; one more fits in the backlog.
        removal.remove(_tree(tmp_path, "second"), lambda: queued.append("second"))
        third = threading.Thread(
            target=removal.remove, args=(_tree(tmp_path, "third"), lambda: queued.append("third"))
        )
        third.start()
        # Whether or not the third caller is still waiting for room, nothing
        # behind the held removal has gone.
        assert (tmp_path / "second").exists() and (tmp_path / "third").exists()
        let_first_finish.set()
        third.join()
        removal.wait()
        assert queued == ["second", "third"]
        assert list(tmp_path.iterdir()) == []
    finally:
        let_first_finish.set()
        removal.close()


def test_a_build_ending_after_close_removes_its_own_tree(tmp_path: Path) -> None:
    """A server stopping while a build still collects: that build's removal is done in place."""
    before = _removal_threads()
    removal = DeferredRemoval(backlog=2)
    removal.remove(_tree(tmp_path, "queued"), lambda: None)
    removal.close()
    late = _tree(tmp_path, "late")
    reported: list[bool] = []
    removal.remove(late, lambda: reported.append(late.exists()))
    assert reported == [False]
    assert list(tmp_path.iterdir()) == []
    assert _removal_threads() == before


def test_a_build_ending_while_close_drains_neither_hangs_close_nor_keeps_its_tree(
    tmp_path: Path,
) -> None:
    removal = DeferredRemoval(backlog=2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait()

    removal.remove(_tree(tmp_path, "first"), hold)
    assert held.wait(30)
    closer = threading.Thread(target=removal.close)
    closer.start()
    # Queued before close() took the lock, or removed here after: either way it goes.
    late = _tree(tmp_path, "late")
    late_done = threading.Event()
    ender = threading.Thread(target=removal.remove, args=(late, late_done.set))
    ender.start()
    release.set()
    closer.join(30)
    ender.join(30)
    assert not closer.is_alive() and not ender.is_alive()
    assert late_done.is_set()
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_raises_is_logged_and_removals_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    removal = DeferredRemoval(backlog=1)

    def fail() -> None:
        raise RuntimeError("report failed")

    after = _tree(tmp_path, "after")
    try:
        with caplog.at_level(logging.ERROR, logger="builder.executor.removal"):
            removal.remove(_tree(tmp_path, "first"), fail)
            removal.remove(after, lambda: None)
            removal.wait()
    finally:
        removal.close()
    assert list(tmp_path.iterdir()) == []
    assert any(r.exc_info and "report failed" in str(r.exc_info[1]) for r in caplog.records)


def test_wait_does_not_wait_for_trees_queued_after_it(tmp_path: Path) -> None:
    """Builds keep ending on a busy server; waiting for the earlier trees still ends."""
    removal = DeferredRemoval(backlog=4)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait()

    earlier = _tree(tmp_path, "earlier")
    try:
        removal.remove(earlier, hold)
        assert held.wait(30)
        waiter = threading.Thread(target=removal.wait)
        waiter.start()
        # The waiter's marker is queued behind "earlier" (held) and nothing else.
        while removal._pending.qsize() < 1:
            waiter.join(0.01)
        later_held = threading.Event()
        removal.remove(_tree(tmp_path, "later"), later_held.wait)
        release.set()
        waiter.join(30)
        assert not waiter.is_alive()
        assert not earlier.exists()
        later_held.set()
    finally:
        release.set()
        removal.close()

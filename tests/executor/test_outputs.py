"""Output collection from a scratch tree written by an untrusted build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode
from builder.errors import BuildFailedError, InvalidArgumentError
from builder.executor.outputs import (
    CollectedOutput,
    collect_outputs,
    export_outputs,
    scan_needles,
)
from tests.canary import make_canary, snapshot


@pytest.fixture
def store(tmp_path: Path) -> tuple[FsBlobService, SqliteDirectoryService]:
    return FsBlobService(tmp_path / "blobs"), SqliteDirectoryService(tmp_path / "d.db")


def test_outputs_in_request_order_with_needles(tmp_path: Path, store) -> None:
    root = tmp_path / "root"
    (root / "nix/store/aaa-out/bin").mkdir(parents=True)
    (root / "nix/store/aaa-out/bin/tool").write_text("uses /nix/store/bbb-dep/lib")
    (root / "nix/store/aaa-out/bin/tool").chmod(0o4755)
    (root / "nix/store/zzz-doc").write_text("plain")
    os.symlink("/nix/store/ccc-other", root / "nix/store/aaa-out/link")
    store_dir = root / "nix/store"
    collected = collect_outputs(
        [("nix/store/aaa-out", store_dir, "aaa-out"), ("nix/store/zzz-doc", store_dir, "zzz-doc")],
        ("bbb", "ccc", "zzz"),
        *store,
    )
    assert [c.path for c in collected] == ["nix/store/aaa-out", "nix/store/zzz-doc"]
    assert isinstance(collected[0].node, DirectoryNode)
    assert collected[0].node.name == b"aaa-out"
    assert collected[0].needles == (0, 1)
    assert isinstance(collected[1].node, FileNode)
    assert collected[1].needles == ()


def test_missing_output_fails(tmp_path: Path, store) -> None:
    (tmp_path / "build").mkdir()
    with pytest.raises(BuildFailedError, match="'build/out' was not produced"):
        collect_outputs([("build/out", tmp_path / "build", "out")], (), *store)


def test_symlink_output_is_stored_not_followed(tmp_path: Path, store) -> None:
    (tmp_path / "build").mkdir()
    os.symlink("/etc/passwd", tmp_path / "build/out")
    (collected,) = collect_outputs([("build/out", tmp_path / "build", "out")], ("passwd",), *store)
    assert collected.node == SymlinkNode(b"out", b"/etc/passwd")
    assert collected.needles == (0,)


def test_symlinked_intermediate_directory_refused(tmp_path: Path, store) -> None:
    (tmp_path / "build").mkdir()
    os.symlink("/etc", tmp_path / "build/sub")
    with pytest.raises(BuildFailedError, match="'sub' on its way is not a directory"):
        collect_outputs([("build/sub/passwd", tmp_path / "build", "sub/passwd")], (), *store)


def test_needle_across_read_boundary(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * ((1 << 20) - 3) + b"needle" + b"y" * 10)
    assert scan_needles(big, ("needle", "absent")) == (0,)


def test_needle_never_spans_two_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a").write_bytes(b"nee")
    (tmp_path / "d/b").write_bytes(b"dle")
    assert scan_needles(tmp_path / "d", ("needle",)) == ()


def test_export_replaces_earlier_copy_read_only(tmp_path: Path, store) -> None:
    blobs, directories = store
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("v1")
    first = CollectedOutput("build/out", ingest_path(src, blobs, directories, b"out"), ())
    (src / "sub" / "f").write_text("v2")
    second = CollectedOutput("build/out", ingest_path(src, blobs, directories, b"out"), ())
    out = tmp_path / "exported"
    export_outputs([first.node], out, blobs, directories)
    assert (out / "out" / "sub" / "f").read_text() == "v1"
    export_outputs([second.node], out, blobs, directories)
    assert (out / "out" / "sub" / "f").read_text() == "v2"
    assert sorted(p.name for p in out.iterdir()) == ["out"]
    assert (out / "out" / "sub" / "f").stat().st_mode & 0o777 == 0o444
    assert (out / "out" / "sub").stat().st_mode & 0o777 == 0o555
    for path in (out / "out", out / "out" / "sub", out / "out" / "sub" / "f"):
        assert path.lstat().st_mtime == 1


def test_export_of_a_symlink_output(tmp_path: Path, store) -> None:
    blobs, directories = store
    os.symlink("/nix/store/elsewhere", tmp_path / "link")
    node = ingest_path(tmp_path / "link", blobs, directories)
    export_outputs([node], tmp_path / "o", blobs, directories)
    assert os.readlink(tmp_path / "o" / "link") == "/nix/store/elsewhere"
    assert (tmp_path / "o" / "link").lstat().st_mtime == 1


@pytest.mark.parametrize("planted", ["symlink", "foreign directory", "open directory"])
def test_export_refuses_a_directory_another_user_planted(
    tmp_path: Path, store, planted: str
) -> None:
    """An --out path in a shared directory such as /tmp may have been made by anyone first.

    Following a symlink there would write (and replace) entries wherever it
    points; writing into another user's directory lets that user swap the
    names being written and renamed for symlinks meanwhile.
    """
    if os.geteuid() != 0:
        pytest.fail("handing a directory to another user needs root")
    blobs, directories = store
    (tmp_path / "src").write_text("exported\n")
    node = ingest_path(tmp_path / "src", blobs, directories, b"out")
    canary = make_canary(tmp_path / "canary", 0)
    (canary / "out").write_text("kept\n")
    before = snapshot(canary)
    out = tmp_path / "shared-out"
    if planted == "symlink":
        out.symlink_to(canary)
    elif planted == "foreign directory":
        out.mkdir()
        os.chown(out, 65534, 65534)
    else:
        out.mkdir()
        out.chmod(0o777)
    with pytest.raises(InvalidArgumentError, match="shared-out"):
        export_outputs([node], out, blobs, directories)
    assert snapshot(canary) == before
    if planted != "symlink":
        assert list(out.iterdir()) == []

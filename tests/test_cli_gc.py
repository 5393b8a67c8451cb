"""``builder gc`` and a server's periodic collection, run as a user would run them."""

from __future__ import annotations

import os
from pathlib import Path

from tests.requirements import require_root
from tests.test_cli import _tree_digest, builder
from tests.test_cli_build_remote import serving
from tests.waiting import wait_for


def _source(root: Path, tag: str) -> Path:
    source = root / tag
    (source / "sub").mkdir(parents=True)
    (source / "top").write_text(f"top of {tag}\n")
    (source / "sub" / "inner").write_text(f"inner of {tag}\n")
    return source


def _import(source: Path, env: dict[str, str]) -> str:
    return _tree_digest(builder("castore", "import", str(source), env=env).stdout)


def test_gc_keeps_pinned_trees_and_removes_the_rest(tmp_path: Path) -> None:
    env = {**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")}
    kept = _import(_source(tmp_path, "kept"), env)
    lost = _import(_source(tmp_path, "lost"), env)

    assert builder("gc", "pin", kept, "--name", "release 1", env=env).stdout.decode() == (
        f"pinned {kept}\n"
    )
    assert builder("gc", "pins", env=env).stdout.decode() == f"{kept} release 1\n"

    young = builder("gc", "--max-bytes", "0", env=env).stdout.decode()
    assert young.startswith("removed 0 blobs (0 bytes) and 0 directories (0 bytes)")

    out = builder("gc", "--max-bytes", "0", "--min-age", "0", env=env).stdout.decode()
    assert out.startswith("removed 2 blobs (26 bytes) and 2 directories")
    assert "(bound 0 bytes)" in out
    builder("castore", "materialise", kept, str(tmp_path / "kept-out"), env=env)
    assert (tmp_path / "kept-out" / "sub" / "inner").read_text() == "inner of kept\n"
    missing = builder(
        "castore", "materialise", lost, str(tmp_path / "lost-out"), env=env, check=False
    )
    assert missing.returncode == 1
    assert f"{lost} is neither a stored directory nor a stored blob" in missing.stderr.decode()

    assert builder("gc", "unpin", kept, env=env).stdout.decode() == f"unpinned {kept}\n"
    again = builder("gc", "unpin", kept, env=env, check=False)
    assert again.returncode == 1 and "is not pinned" in again.stderr.decode()
    assert builder("gc", "pins", env=env).stdout.decode() == ""
    builder("gc", "--min-age", "0", env=env)
    gone = builder("castore", "materialise", kept, str(tmp_path / "gone"), env=env, check=False)
    assert gone.returncode == 1


def test_gc_refuses_malformed_digests_sizes_and_ages(tmp_path: Path) -> None:
    env = {**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "data")}
    digest = builder("gc", "pin", "nonsense", env=env, check=False)
    assert digest.returncode == 2 and "malformed digest 'nonsense'" in digest.stderr.decode()
    size = builder("gc", "--max-bytes", "12X", env=env, check=False)
    assert size.returncode == 2 and "'12X' is not a byte count" in size.stderr.decode()
    age = builder("gc", "--min-age", "-5", env=env, check=False)
    assert age.returncode == 2
    assert "--min-age: '-5' is not a number of seconds" in age.stderr.decode()


def test_a_bounded_server_collects_on_its_own(tmp_path: Path) -> None:
    require_root("the server's sandbox launcher runs builds as build users")
    env = {**os.environ, "BUILDER_DATA_DIR": str(tmp_path / "server-data")}
    kept = _import(_source(tmp_path, "kept"), env)
    lost = _import(_source(tmp_path, "lost"), env)
    builder("gc", "pin", kept, env=env)
    blobs = tmp_path / "server-data" / "blobs"

    def blob_files() -> int:
        return sum(len(list(shard.iterdir())) for shard in blobs.iterdir() if len(shard.name) == 2)

    assert blob_files() == 4
    options = ("--store-max-bytes", "1K", "--gc-interval", "0.1", "--gc-min-age", "0")
    with serving(tmp_path, f"grpc+unix://{tmp_path}/builder.sock", *options) as server:
        wait_for(
            lambda: "garbage collection finished" in server.log.read_text(),
            what="the server's first collection",
        )
        wait_for(lambda: blob_files() == 2, what="the server's collection")
    builder("castore", "materialise", kept, str(tmp_path / "kept-out"), env=env)
    gone = builder("castore", "materialise", lost, str(tmp_path / "gone"), env=env, check=False)
    assert gone.returncode == 1

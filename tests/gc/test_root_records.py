"""Roots record their last use, and databases made before that upgrade in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from builder.castore.collection import USE_RECORD_INTERVAL
from builder.castore.digest import Digest
from builder.castore.nodes import FileNode
from builder.executor.outputs import CollectedOutput
from builder.executor.request import BuildRequest, Constraints, tvix_response
from builder.executor.results import record_result, recorded_result, request_digest
from builder.store.pathinfos.sqlite import SqlitePathInfoService
from builder.store.results.sqlite import SqliteResultCache
from builder.store.wire import encode_path_info
from tests.store.infos import symlink_info

REQUEST = BuildRequest(
    inputs=(),
    command_args=("/bin/true",),
    working_dir="build",
    scratch_paths=("build",),
    inputs_dir="nix/store",
    outputs=("out",),
    environment=(),
    constraints=Constraints(system="x86_64-linux"),
)
OUTPUT = CollectedOutput("out", FileNode(b"out", Digest.of(b"built"), 5), ())


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_result_cache_records_a_use_once_the_last_is_old_enough(tmp_path: Path) -> None:
    clock = Clock()
    cache = SqliteResultCache(tmp_path / "results.sqlite", clock)
    try:
        record_result(cache, REQUEST, [OUTPUT])
        (root,) = list(cache.used_roots())
        assert (root.key, root.nodes, root.last_used) == (
            bytes(request_digest(REQUEST)),
            (OUTPUT.node,),
            5000.0,
        )
        clock.now += USE_RECORD_INTERVAL / 2
        assert recorded_result(cache, REQUEST) == [OUTPUT]
        assert next(cache.used_roots()).last_used == 5000.0
        clock.now += USE_RECORD_INTERVAL
        assert recorded_result(cache, REQUEST) == [OUTPUT]
        assert next(cache.used_roots()).last_used == clock.now
        assert not cache.evict(root)
        assert cache.evict(next(cache.used_roots()))
        assert recorded_result(cache, REQUEST) is None
    finally:
        cache.close()


def test_an_older_result_cache_is_dated_at_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE results (request BLOB PRIMARY KEY NOT NULL, build BLOB NOT NULL) "
            "WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO results VALUES (?, ?)",
            (
                bytes(request_digest(REQUEST)),
                tvix_response(None, [OUTPUT]).SerializeToString(deterministic=True),
            ),
        )
    conn.close()
    cache = SqliteResultCache(path, Clock())
    try:
        assert [r.last_used for r in cache.used_roots()] == [5000.0]
        assert recorded_result(cache, REQUEST) == [OUTPUT]
    finally:
        cache.close()


def test_an_older_pathinfo_database_is_dated_at_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "pathinfo.sqlite"
    info = symlink_info("old")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE pathinfos (digest BLOB PRIMARY KEY NOT NULL, data BLOB NOT NULL) "
            "WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO pathinfos VALUES (?, ?)", (info.path.digest, encode_path_info(info))
        )
    conn.close()
    clock = Clock()
    service = SqlitePathInfoService(path, clock)
    try:
        (root,) = list(service.used_roots())
        assert (root.key, root.last_used) == (info.path.digest, 5000.0)
        clock.now += USE_RECORD_INTERVAL
        assert service.get(info.path.digest) == info
        assert [r.last_used for r in service.used_roots()] == [clock.now]
    finally:
        service.close()

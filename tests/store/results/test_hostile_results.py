"""What a shared bucket or database holds is checked before it is served."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import obstore
import pytest

from builder.errors import IntegrityError
from builder.store.results.objectstore import ObjectStoreResultCache, result_key
from builder.store.results.service import MAX_RESULT_BYTES
from builder.store.results.sqlite import SqliteResultCache
from tests.store.results.test_result_cache_contract import file_output, key, result


def test_an_oversized_object_is_refused_before_it_is_read() -> None:
    cache = ObjectStoreResultCache("memory://")
    obstore.put(cache.store, result_key(key("big")), bytes(MAX_RESULT_BYTES + 1))
    with pytest.raises(IntegrityError, match="more than the"):
        cache.get(key("big"))


def test_an_object_that_is_not_a_result_is_refused() -> None:
    cache = ObjectStoreResultCache("memory://")
    obstore.put(cache.store, result_key(key("junk")), b"\xff\xff\xff")
    with pytest.raises(IntegrityError, match="not a result"):
        cache.get(key("junk"))
    with pytest.raises(IntegrityError, match="not a result"):
        list(cache.used_roots())


def test_a_stored_result_with_a_malformed_digest_is_refused() -> None:
    cache = ObjectStoreResultCache("memory://")
    build = result(file_output("a"))
    build.outputs[0].file.digest = b"short"
    obstore.put(cache.store, result_key(key("a")), build.SerializeToString())
    with pytest.raises(IntegrityError, match="digest"):
        cache.get(key("a"))


def test_objects_under_the_prefix_not_named_by_a_digest_are_skipped() -> None:
    cache = ObjectStoreResultCache("memory://")
    obstore.put(cache.store, "results/README", b"someone else's")
    cache.put(key("a"), result(file_output("a")))
    assert [root.key for root in cache.used_roots()] == [key("a")]


def test_a_corrupt_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    SqliteResultCache(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO results VALUES (?, ?, 0)", (key("bad"), b"\xff\xff"))
    conn.close()
    cache = SqliteResultCache(path)
    try:
        with pytest.raises(IntegrityError, match="not a result"):
            cache.get(key("bad"))
    finally:
        cache.close()

"""What a shared bucket or database holds is checked before it is served."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import obstore
import pytest

from builder.castore.grpc.channel import open_channel
from builder.errors import IntegrityError
from builder.proto.builder.v1 import result_cache_pb2, result_cache_pb2_grpc
from builder.store.results.grpc import GrpcResultCache
from builder.store.results.objectstore import ObjectStoreResultCache, result_key
from builder.store.results.service import MAX_RESULT_BYTES
from builder.store.results.sqlite import SqliteResultCache
from tests.store.results.backends import RESULT_BACKENDS
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


def test_the_service_refuses_malformed_keys_and_results_from_any_client(tmp_path: Path) -> None:
    """The server checks what a raw client sends, not only what our client would."""
    with RESULT_BACKENDS["grpc-unix"](tmp_path) as backend:
        assert isinstance(backend.cache, GrpcResultCache)
        channel = open_channel(backend.cache.url)
        stub = result_cache_pb2_grpc.ResultCacheStub(channel)
        try:
            with pytest.raises(grpc.RpcError) as short_key:
                stub.Get(result_cache_pb2.GetResultRequest(key=b"short"))
            assert short_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expected 32" in (short_key.value.details() or "")
            bad = result(file_output("a"))
            bad.outputs_needles.add()
            with pytest.raises(grpc.RpcError) as mismatched:
                stub.Put(result_cache_pb2.PutResultRequest(key=key("a"), build=bad))
            assert mismatched.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert backend.cache.get(key("a")) is None
        finally:
            channel.close()

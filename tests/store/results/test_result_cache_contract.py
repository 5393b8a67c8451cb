"""The contract every result cache backend must honour."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.castore.collection import EvictableRoots
from builder.castore.digest import Digest
from builder.castore.nodes import FileNode, Node, SymlinkNode
from builder.castore.wire import Family, node_to_proto
from builder.errors import InvalidArgumentError
from builder.proto.tvix.build.protos import build_pb2
from tests.store.results.backends import ResultBackend


def key(tag: str) -> bytes:
    return bytes(Digest.of(tag.encode()))


def result(*nodes: Node, needles: tuple[int, ...] = ()) -> build_pb2.Build:
    return build_pb2.Build(
        outputs=[node_to_proto(node, Family.TVIX) for node in nodes],
        outputs_needles=[build_pb2.Build.OutputNeedles(needles=needles) for _ in nodes],
    )


def file_output(tag: str) -> FileNode:
    return FileNode(b"out", Digest.of(tag.encode()), len(tag), False)


def test_round_trip(backend: ResultBackend) -> None:
    build = result(file_output("a"), SymlinkNode(b"dev", b"/x"), needles=(0, 3))
    backend.cache.put(key("a"), build)
    assert backend.cache.get(key("a")) == build


def test_an_unknown_key_is_none(backend: ResultBackend) -> None:
    backend.cache.put(key("known"), result(file_output("known")))
    assert backend.cache.get(key("unknown")) is None


@pytest.mark.parametrize("size", [0, 20, 31, 33])
def test_a_key_not_32_bytes_is_refused(backend: ResultBackend, size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="expected 32"):
        backend.cache.get(bytes(size))
    with pytest.raises(InvalidArgumentError, match="expected 32"):
        backend.cache.put(bytes(size), result(file_output("x")))


def test_put_replaces(backend: ResultBackend) -> None:
    backend.cache.put(key("k"), result(file_output("first")))
    backend.cache.put(key("k"), result(file_output("second")))
    assert backend.cache.get(key("k")) == result(file_output("second"))
    assert [root.nodes for root in backend.cache.used_roots()] == [(file_output("second"),)]


def test_a_result_whose_needles_do_not_match_its_outputs_is_refused(
    backend: ResultBackend,
) -> None:
    build = result(file_output("a"))
    build.outputs_needles.add()
    with pytest.raises(InvalidArgumentError, match="1 outputs but 2 needle lists"):
        backend.cache.put(key("a"), build)
    assert backend.cache.get(key("a")) is None


def test_a_result_naming_a_malformed_digest_is_refused(backend: ResultBackend) -> None:
    build = result(file_output("a"))
    build.outputs[0].file.digest = b"short"
    with pytest.raises(InvalidArgumentError, match=r"outputs\[0\]\.file\.digest"):
        backend.cache.put(key("a"), build)


def test_a_result_carrying_its_request_is_refused(backend: ResultBackend) -> None:
    build = result(file_output("a"))
    build.build_request.command_args.append("/bin/true")
    with pytest.raises(InvalidArgumentError, match="build_request"):
        backend.cache.put(key("a"), build)


def test_used_roots_list_every_entry_once_with_its_outputs(backend: ResultBackend) -> None:
    assert list(backend.cache.used_roots()) == []
    tags = [f"r{i}" for i in range(300)]
    for tag in tags:
        backend.cache.put(key(tag), result(file_output(tag)))
    roots = {root.key: root for root in backend.cache.used_roots()}
    assert set(roots) == {key(tag) for tag in tags}
    assert all(roots[key(tag)].nodes == (file_output(tag),) for tag in tags)
    assert isinstance(backend.cache, EvictableRoots)


def test_evict_drops_an_entry_unused_since_it_was_listed(backend: ResultBackend) -> None:
    backend.cache.put(key("gone"), result(file_output("gone")))
    backend.cache.put(key("kept"), result(file_output("kept")))
    roots = {root.key: root for root in backend.cache.used_roots()}
    assert backend.cache.evict(roots[key("gone")])
    assert backend.cache.get(key("gone")) is None
    assert not backend.cache.evict(roots[key("gone")])
    assert backend.cache.get(key("kept")) is not None


def test_evict_keeps_an_entry_used_after_the_listed_time(backend: ResultBackend) -> None:
    backend.cache.put(key("used"), result(file_output("used")))
    (root,) = backend.cache.used_roots()
    stale = type(root)(root.key, root.nodes, root.last_used - 3600)
    assert not backend.cache.evict(stale)
    assert backend.cache.get(key("used")) is not None


def test_concurrent_puts_and_gets(backend: ResultBackend) -> None:
    def work(i: int) -> bool:
        backend.cache.put(key(f"c{i}"), result(file_output(f"c{i}")))
        return backend.cache.get(key(f"c{i}")) == result(file_output(f"c{i}"))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(64)))
    assert len(list(backend.cache.used_roots())) == 64


def test_entries_outlive_the_cache_object(durable_backend: ResultBackend) -> None:
    build = result(file_output("durable"), needles=(1,))
    durable_backend.cache.put(key("durable"), build)
    assert durable_backend.reopen is not None
    again = durable_backend.reopen()
    try:
        assert again.get(key("durable")) == build
    finally:
        again.close()

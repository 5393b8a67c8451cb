"""Hostile tree shapes end to end over gRPC: deep trees a build leaves behind or
outputs, directories it leaves unwritable, and inputs that expand exponentially."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from builder.castore.digest import Digest
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directory import Directory
from builder.castore.fs.materialise import materialise_node
from builder.castore.fs.nar import nar_hash
from builder.castore.nodes import DirectoryNode
from builder.castore.wire import Family
from builder.executor.config import BuildLimits
from builder.executor.matcache.cache import TMP_DIR, TREES_DIR
from builder.executor.removal import remove_tree
from builder.executor.request import request_to_proto
from sandbox import Launcher
from tests.deep_trees import depth_of
from tests.server.test_build_grpc import Served, _input, _request, _serve, launcher  # noqa: F401

DEPTH = 2_000
# Busybox sh changes directory by full path, so one-letter names keep the
# deepest path just under PATH_MAX inside the sandbox; on the host, below the
# work directory, it is longer than PATH_MAX.
DEEP = f"i=0; while [ $i -lt {DEPTH} ]; do mkdir d; cd d; i=$((i+1)); done; echo deep-needle > f"
CHAIN = 24


@pytest.fixture(params=[None, 64 << 20], ids=["bound", "copied-back"])
def served(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    launcher: Launcher,  # noqa: F811
) -> Iterator[Served]:
    """A server whose scratch is bound directly, or capped and copied back.

    Whatever a failing test leaves is removed here: pytest's own clean-up of
    old temporary directories recurses and would fail on a deep tree.
    """
    try:
        yield from _serve(tmp_path, launcher, limits=BuildLimits(scratch_bytes=request.param))
    finally:
        remove_tree(tmp_path / "work")
        remove_tree(tmp_path / "materialised")


def _builds_left(served: Served) -> list[str]:
    served.service.wait_for_removals()
    builds = served.work / "builds"
    return [tree for owner in os.listdir(builds) for tree in os.listdir(builds / owner)]


def test_deep_scratch_left_behind_is_removed(served: Served) -> None:
    request = _request(f"cd /build && {DEEP} && echo ok > /nix/store/out")
    response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=300)
    assert response.outputs[0].output.file.size == 3
    assert _builds_left(served) == []


def test_deep_output_is_stored_rendered_materialised_and_scanned(
    served: Served, tmp_path: Path
) -> None:
    request = _request(
        f"mkdir /nix/store/out && cd /nix/store/out && {DEEP}",
        refscan_needles=("absent", "deep-needle"),
    )
    response = served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=300)
    (output,) = response.outputs
    assert list(output.needles) == [1]
    tree = output.output.directory
    node = DirectoryNode(tree.name, Digest(tree.digest), tree.size)
    # Two per level (its one entry and the entry naming it), two for the file.
    assert tree.size == 2 * DEPTH + 2
    store = served.store
    _, nar_size = nar_hash(node, store.blobs, store.directories)
    assert nar_size > DEPTH * 100
    dest = tmp_path / "materialised"
    materialise_node(node, dest, store.blobs, store.directories)
    assert depth_of(dest, b"d") == DEPTH
    assert _builds_left(served) == []


def test_unwritable_directories_left_behind_are_removed(served: Served) -> None:
    script = (
        "mkdir -p /build/none/inner /build/ro/inner /nix/store/out && "
        "echo x > /build/none/inner/f && echo y > /build/ro/inner/f && "
        "chmod 000 /build/none/inner /build/none && chmod 500 /build/ro/inner /build/ro && "
        "chmod 500 /nix/store/out && chmod 000 /build"
    )
    response = served.snix().DoBuild(request_to_proto(_request(script), Family.SNIX), timeout=120)
    assert response.outputs[0].output.HasField("directory")
    assert _builds_left(served) == []


def _doubling_chain(served: Served, depth: int = CHAIN, family: Family = Family.TVIX) -> Directory:
    """``depth`` directories, each naming the one below twice: 2**depth leaves when expanded.

    The castore's closure putter and recursive Get must handle it by unique
    digests, or this alone would not finish.
    """
    url = f"grpc+unix://{served.work.parent / 'builder.sock'}"
    client = GrpcDirectoryService(url, family)
    try:
        putter = client.put_multiple_start()
        current = Directory()
        putter.put(current)
        for _ in range(depth):
            current = Directory(directories=(current.node(b"a"), current.node(b"b")))
            putter.put(current)
        assert putter.close() == current.digest
        assert len(list(client.get_recursive(current.digest))) == depth + 1
    finally:
        client.close()
    return current


@pytest.mark.parametrize("served", [None], indirect=True, ids=["bound"])
@pytest.mark.parametrize("family", list(Family))
def test_castore_handles_a_doubling_chain_by_unique_digests(served: Served, family: Family) -> None:
    # 60 levels: 2**60 directories expanded, still a size below 2**64.
    top = _doubling_chain(served, 60, family)
    assert top.size > 1 << 60


@pytest.mark.parametrize("served", [None], indirect=True, ids=["bound"])
def test_exponential_input_is_refused_before_anything_is_fetched(served: Served) -> None:
    chain = _doubling_chain(served)
    max_size = served.service.config.max_input_size
    assert chain.size > max_size
    request = _request("true", inputs=(chain.node(b"chain"),))
    with pytest.raises(grpc.RpcError) as info:
        served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert "inputs[0] chain" in details
    assert str(chain.size) in details and str(max_size) in details
    _assert_cache_untouched(served)


@pytest.mark.parametrize("served", [None], indirect=True, ids=["bound"])
def test_input_size_claim_must_match_the_stored_directory(served: Served) -> None:
    chain = _doubling_chain(served)
    lying = DirectoryNode(b"chain", chain.digest, 10)
    request = _request("true", inputs=(lying,))
    with pytest.raises(grpc.RpcError) as info:
        served.tvix().DoBuild(request_to_proto(request, Family.TVIX), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert "inputs[0] chain" in details
    assert "size is 10" in details and str(chain.size) in details
    _assert_cache_untouched(served)


def test_input_size_limit_is_the_operators(tmp_path: Path, launcher: Launcher) -> None:  # noqa: F811
    gen = _serve(tmp_path, launcher, max_input_size=1)
    served = next(gen)
    try:
        src = _input(served, tmp_path)
        assert src.size > 1
        request = _request("true", inputs=(src,))
        with pytest.raises(grpc.RpcError) as info:
            served.snix().DoBuild(request_to_proto(request, Family.SNIX), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"directory size {src.size} exceeds the limit of 1" in info.value.details()
    finally:
        next(gen, None)


def _assert_cache_untouched(served: Served) -> None:
    stats = served.service.cache.stats()
    assert (stats.fills, stats.bytes_used) == (0, 0)
    cache = served.work / "cache"
    assert os.listdir(cache / TREES_DIR) == [] and os.listdir(cache / TMP_DIR) == []

"""The contract every PathInfoService backend must honour."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.castore.collection import EvictableRoots
from builder.castore.nodes import SymlinkNode
from builder.errors import InvalidArgumentError
from builder.store.path_info import ContentAddress, HashKind, PathInfo
from tests.store.backends import PathInfoBackend
from tests.store.infos import full_info, store_path, symlink_info


def test_round_trip_of_every_field(backend: PathInfoBackend) -> None:
    info = full_info(backend.blobs, backend.directories)
    assert backend.service.put(info) == info
    assert backend.service.get(info.path.digest) == info


def test_unknown_path_is_none(backend: PathInfoBackend) -> None:
    backend.service.put(symlink_info("known"))
    assert backend.service.get(store_path("unknown").digest) is None


@pytest.mark.parametrize("size", [0, 19, 21, 32])
def test_a_digest_not_20_bytes_is_refused(backend: PathInfoBackend, size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="expected 20"):
        backend.service.get(bytes(size))


def test_put_overwrites_and_is_idempotent(backend: PathInfoBackend) -> None:
    first = symlink_info("same", b"/first")
    second = dataclasses.replace(first, node=SymlinkNode(first.node.name, b"/second"))
    backend.service.put(first)
    backend.service.put(first)
    assert backend.service.get(first.path.digest) == first
    backend.service.put(second)
    assert backend.service.get(first.path.digest) == second
    assert list(backend.service.list()) == [second]


def test_list_gives_every_path_once(backend: PathInfoBackend) -> None:
    assert list(backend.service.list()) == []
    infos = [symlink_info(f"p{i}") for i in range(300)]
    infos.append(full_info(backend.blobs, backend.directories))
    for info in infos:
        backend.service.put(info)
    listed = list(backend.service.list())
    assert len(listed) == len(infos)
    assert sorted(listed, key=lambda i: i.path) == sorted(infos, key=lambda i: i.path)


def _invalid_infos() -> dict[str, tuple[PathInfo, str]]:
    good = symlink_info("good")
    return {
        "node name": (
            dataclasses.replace(good, node=SymlinkNode(b"other-name", b"/x")),
            "basename",
        ),
        "nar_sha256": (dataclasses.replace(good, nar_sha256=b"short"), "nar_sha256"),
        "nar_size": (dataclasses.replace(good, nar_size=0), "nar_size"),
        "references": (
            dataclasses.replace(good, references=(store_path("r"), store_path("r"))),
            "twice",
        ),
        "deriver": (dataclasses.replace(good, deriver=store_path("not-a-drv")), "deriver"),
        "ca": (
            dataclasses.replace(good, ca=ContentAddress(HashKind.NAR_SHA256, b"short")),
            "ca",
        ),
    }


@pytest.mark.parametrize("field", sorted(_invalid_infos()))
def test_invalid_infos_are_refused(backend: PathInfoBackend, field: str) -> None:
    info, message = _invalid_infos()[field]
    with pytest.raises(InvalidArgumentError, match=message):
        backend.service.put(info)
    assert backend.service.get(info.path.digest) is None


def test_records_survive_reopening(durable_backend: PathInfoBackend) -> None:
    backend = durable_backend
    assert backend.reopen is not None
    info = full_info(backend.blobs, backend.directories)
    backend.service.put(info)
    backend.service.close()
    backend.service = backend.reopen()
    assert backend.service.get(info.path.digest) == info
    assert list(backend.service.list()) == [info]


def test_concurrent_puts_from_threads(backend: PathInfoBackend) -> None:
    infos = [symlink_info(f"t{i}") for i in range(64)]
    contested = [symlink_info("contested", f"/v{i}".encode()) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(backend.service.put, infos + contested)) == infos + contested
    for info in infos:
        assert backend.service.get(info.path.digest) == info
    assert backend.service.get(contested[0].path.digest) in contested
    assert len(list(backend.service.list())) == len(infos) + 1


def test_records_are_roots_evicted_unless_used_since(backend: PathInfoBackend) -> None:
    """Local backends list their records as roots for collection; a remote one cannot."""
    service = backend.service
    if not isinstance(service, EvictableRoots):
        assert type(service).__name__ == "GrpcPathInfoService"
        return
    info = symlink_info("rooted")
    service.put(info)
    (root,) = list(service.used_roots())
    assert (root.key, root.nodes) == (info.path.digest, (info.node,))
    assert not service.evict(dataclasses.replace(root, last_used=root.last_used - 1))
    assert service.get(info.path.digest) == info
    assert service.evict(root)
    assert service.get(info.path.digest) is None
    assert list(service.used_roots()) == []
    assert not service.evict(root)

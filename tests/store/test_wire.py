"""PathInfo messages of both families: faithful round trips, and refusals naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.wire import Family
from builder.errors import IntegrityError, InvalidArgumentError
from builder.store.path_info import PathInfo
from builder.store.wire import (
    decode_path_info,
    encode_path_info,
    path_info_from_proto,
    path_info_to_proto,
    pathinfo_messages,
)
from tests.store.infos import full_info, store_path


def _info() -> PathInfo:
    return full_info(MemoryBlobService(), MemoryDirectoryService())


@pytest.mark.parametrize("family", list(Family))
def test_round_trip(family: Family) -> None:
    info = _info()
    message = path_info_to_proto(info, family)
    again = pathinfo_messages(family).PathInfo.FromString(message.SerializeToString())
    assert path_info_from_proto(again) == info


@pytest.mark.parametrize("family", list(Family))
def test_wire_shape(family: Family) -> None:
    """Field by field as the protocol has it: bare digests, basenames, deriver without .drv."""
    info = _info()
    message = path_info_to_proto(info, family)
    node = getattr(message, "node" if family is Family.TVIX else "entry")
    assert node.directory.name == info.path.basename.encode()
    assert list(message.references) == [r.digest for r in info.references]
    assert all(len(r) == 20 for r in message.references)
    assert list(message.narinfo.reference_names) == [r.basename for r in info.references]
    assert info.deriver is not None
    assert message.narinfo.deriver.name == "full"
    assert message.narinfo.deriver.digest == info.deriver.digest
    assert message.narinfo.nar_sha256 == info.nar_sha256
    assert message.narinfo.nar_size == info.nar_size
    assert [(s.name, s.data) for s in message.narinfo.signatures] == [
        (s.name, s.data) for s in info.signatures
    ]
    assert info.ca is not None
    assert message.narinfo.ca.type == 0
    assert message.narinfo.ca.digest == info.ca.digest


def test_families_share_the_encoding() -> None:
    info = _info()
    tvix = path_info_to_proto(info, Family.TVIX).SerializeToString(deterministic=True)
    snix = path_info_to_proto(info, Family.SNIX).SerializeToString(deterministic=True)
    assert tvix == snix == encode_path_info(info)


def _node(message: Any) -> Any:
    return message.node if message.DESCRIPTOR.full_name.startswith("tvix") else message.entry


Mutation = Callable[[Any], None]

MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "no node": (
        lambda m: m.ClearField(_node(m).DESCRIPTOR.name.lower()),
        r"\.(node|entry): not set",
    ),
    "node name not a basename": (
        lambda m: setattr(_node(m).directory, "name", b"not-a-store-path"),
        r"\.(node|entry)\.name",
    ),
    "node name not UTF-8": (
        lambda m: setattr(_node(m).directory, "name", b"\xff" * 40),
        "not UTF-8",
    ),
    "no narinfo": (lambda m: m.ClearField("narinfo"), r"narinfo: not set"),
    "reference digest": (
        lambda m: m.references.__setitem__(0, b"short"),
        r"references\[0\]: 5 bytes, expected 20",
    ),
    "reference_names count": (
        lambda m: m.narinfo.reference_names.pop(),
        "reference_names: 2 names for 3 references",
    ),
    "reference_names mismatch": (
        lambda m: m.narinfo.reference_names.__setitem__(0, store_path("other").basename),
        r"reference_names\[0\]: .* is not the path references\[0\] names",
    ),
    "reference_names not a basename": (
        lambda m: m.narinfo.reference_names.__setitem__(1, "../etc"),
        r"reference_names\[1\]",
    ),
    "deriver with .drv": (
        lambda m: setattr(m.narinfo.deriver, "name", "full.drv"),
        r"deriver\.name: 'full\.drv' must be given without '\.drv'",
    ),
    "deriver digest": (
        lambda m: setattr(m.narinfo.deriver, "digest", b"x" * 19),
        r"deriver\.digest: 19 bytes, expected 20",
    ),
    "nar_sha256": (
        lambda m: setattr(m.narinfo, "nar_sha256", b"x" * 31),
        "nar_sha256 is 31 bytes, expected 32",
    ),
    "nar_size": (lambda m: setattr(m.narinfo, "nar_size", 0), "nar_size must be positive"),
    "ca type": (lambda m: setattr(m.narinfo.ca, "type", 42), r"ca\.type: 42 is not a known"),
    "ca digest": (lambda m: setattr(m.narinfo.ca, "digest", b"x" * 20), r"ca: NAR_SHA256 digest"),
    "file digest": (
        lambda m: setattr(_node(m).directory, "digest", b"x"),
        r"\.(node|entry)\.directory\.digest",
    ),
}


@pytest.mark.parametrize("family", list(Family))
@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_malformed_messages_are_refused_naming_the_field(family: Family, case: str) -> None:
    message = path_info_to_proto(_info(), family)
    mutate, expected = MUTATIONS[case]
    mutate(message)
    with pytest.raises(InvalidArgumentError, match=expected):
        path_info_from_proto(message)


def test_stored_bytes_that_do_not_decode_are_damage() -> None:
    with pytest.raises(IntegrityError, match="where: stored record does not decode"):
        decode_path_info(b"\xff\xff\xff", "where")
    assert decode_path_info(encode_path_info(_info()), "where") == _info()

"""Digest, node and Directory rules, checked against the protocol's test vectors."""

from __future__ import annotations

import pytest

from builder.castore.digest import Digest
from builder.castore.directory import Directory
from builder.castore.nodes import DirectoryNode, FileNode, SymlinkNode, validate_root_node
from builder.castore.wire import (
    Family,
    decode_directory,
    directory_from_proto,
    directory_to_proto,
    node_from_proto,
    node_to_proto,
)
from builder.errors import InvalidArgumentError
from tests.digests import EMPTY_DIGEST

EMPTY_HEX = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_empty_blob_and_empty_directory_share_a_digest() -> None:
    assert EMPTY_DIGEST.hex() == EMPTY_HEX
    assert Directory().digest == EMPTY_DIGEST
    assert str(EMPTY_DIGEST) == "blake3-rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI="


def test_hello_world_vector() -> None:
    assert Digest.of(b"Hello World!").hex() == (
        "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    )


def test_keep_file_vector() -> None:
    directory = Directory.of([FileNode(b".keep", EMPTY_DIGEST, 0)])
    assert directory.digest.hex() == (
        "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"
    )
    assert directory.size == 2


def test_child_directory_vector() -> None:
    directory = Directory.of([DirectoryNode(b"a", EMPTY_DIGEST, 0)])
    assert directory.digest.hex() == (
        "8701f4722d8dae7f2c40fa003331b8437a3825f9e1bfd3a77998c64cc226b9cc"
    )
    assert directory.size == 2


def test_size_rule_counts_nested_entries() -> None:
    child = Directory.of(
        [FileNode(b"a", EMPTY_DIGEST, 0), SymlinkNode(b"b", b"a"), FileNode(b"c", EMPTY_DIGEST, 0)]
    )
    assert child.size == 6
    parent = Directory.of([child.node(b"d"), FileNode(b"e", EMPTY_DIGEST, 0)])
    assert parent.size == 2 + (1 + 6) + 1


def test_text_form_round_trips() -> None:
    digest = Digest.of(b"x")
    assert Digest.parse(str(digest)) == digest
    assert Digest.parse(digest.hex()) == digest


@pytest.mark.parametrize("text", ["blake3-AAAA", "blake3-!!!", "abc", "blake3-" + "A" * 44])
def test_malformed_text_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="digest"):
        Digest.parse(text)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_digest_length(length: int) -> None:
    with pytest.raises(InvalidArgumentError, match=f"got {length}"):
        Digest(b"\0" * length)


def test_wrong_digest_length_in_message_names_field() -> None:
    msg = directory_to_proto(Directory.of([FileNode(b"a", EMPTY_DIGEST, 0)]))
    msg.files[0].digest = b"short"
    with pytest.raises(InvalidArgumentError, match=r"files\[0\]\.digest"):
        directory_from_proto(msg)


@pytest.mark.parametrize("family", list(Family))
def test_both_families_encode_identically(family: Family) -> None:
    directory = Directory.of(
        [
            FileNode(b"f", Digest.of(b"1"), 1, True),
            SymlinkNode(b"s", b"/x"),
            DirectoryNode(b"d", EMPTY_DIGEST, 0),
        ]
    )
    encoded = directory_to_proto(directory, family).SerializeToString(deterministic=True)
    assert encoded == directory.encoded
    assert decode_directory(encoded) == directory
    for node in directory.entries():
        assert node_from_proto(node_to_proto(node, family)) == node


def test_unset_node_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="no node kind"):
        node_from_proto(Family.SNIX.castore.Entry())


def test_root_node_may_be_unnamed() -> None:
    validate_root_node(FileNode(b"", EMPTY_DIGEST, 0))
    with pytest.raises(InvalidArgumentError):
        validate_root_node(FileNode(b"a/b", EMPTY_DIGEST, 0))

"""The result cache protocol and the checks every backend applies to what it decodes.

A result is a Tvix ``Build`` without its request: one output node and its
needles per requested output. The key is the BLAKE3 digest of the request's
deterministic encoding, which the executor computes; this layer only stores.

Entries are roots for garbage collection (``builder.castore.collection``): each
keeps its outputs alive and carries when it was last recorded or read, so that
a collector bounding the store drops the least recently used first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from google.protobuf.message import DecodeError

from builder.castore.collection import UsedRoot
from builder.castore.nodes import Node
from builder.castore.wire import node_from_proto
from builder.errors import IntegrityError, InvalidArgumentError
from builder.proto.tvix.build.protos import build_pb2

KEY_SIZE = 32

MAX_RESULT_BYTES = 4 * 1024 * 1024
"""Bytes: the largest encoded result accepted or decoded; far above any real build's outputs,
and it bounds what a hostile shared store or peer can make a reader hold."""


class ResultCache(Protocol):
    def get(self, key: bytes) -> build_pb2.Build | None:
        """The result recorded under ``key``; a hit counts as a use of the entry."""
        ...

    def put(self, key: bytes, build: build_pb2.Build) -> None:
        """Record ``build`` under ``key`` durably, replacing any earlier result."""
        ...

    def used_roots(self) -> Iterator[UsedRoot]: ...

    def evict(self, root: UsedRoot) -> bool:
        """Drop ``root`` unless it was used again since ``root.last_used``; whether it went."""
        ...

    def close(self) -> None: ...


def check_key(key: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise InvalidArgumentError(f"result key: expected {KEY_SIZE} bytes, got {len(key)}")
    return key


def encode_result(build: build_pb2.Build) -> bytes:
    """The stored form, after checking ``build`` is one a reader would accept."""
    data = build.SerializeToString(deterministic=True)
    result_nodes(build, "result")
    if len(data) > MAX_RESULT_BYTES:
        raise InvalidArgumentError(
            f"result: {len(data)} bytes encoded, more than the {MAX_RESULT_BYTES} allowed"
        )
    return data


def decode_result(data: bytes, where: str) -> build_pb2.Build:
    """A stored result, refused unless it is within bounds and names well-formed outputs."""
    if len(data) > MAX_RESULT_BYTES:
        raise IntegrityError(
            f"{where}: {len(data)} bytes, more than the {MAX_RESULT_BYTES} allowed"
        )
    try:
        build = build_pb2.Build.FromString(data)
    except DecodeError as error:
        raise IntegrityError(f"{where}: not a result: {error}") from error
    try:
        result_nodes(build, where)
    except InvalidArgumentError as error:
        raise IntegrityError(str(error)) from error
    return build


def result_nodes(build: build_pb2.Build, where: str) -> tuple[Node, ...]:
    """The output nodes of ``build``, which has exactly one needle list per output.

    The request is the key; a copy inside would only be bytes a shared store
    or peer could make every reader carry.
    """
    if build.HasField("build_request"):
        raise InvalidArgumentError(f"{where}.build_request: a result carries no request")
    if len(build.outputs_needles) != len(build.outputs):
        raise InvalidArgumentError(
            f"{where}: {len(build.outputs)} outputs but {len(build.outputs_needles)} needle lists"
        )
    return tuple(
        node_from_proto(node, f"{where}.outputs[{index}]")
        for index, node in enumerate(build.outputs)
    )

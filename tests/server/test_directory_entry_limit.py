"""The bound on entries per Directory message, wherever directories enter the store.

An oversized message is refused from its decoded protobuf, before it is turned
into the model or validated, with the directory's digest and its entry count
in the message; nothing of its closure is stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import grpc
import pytest

from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.digest import Digest
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.directory import Directory
from builder.castore.grpc.channel import open_channel
from builder.castore.grpc.stubs import castore_rpc
from builder.castore.nodes import SymlinkNode
from builder.castore.wire import DEFAULT_MAX_DIRECTORY_ENTRIES, Family
from builder.cli import build_parser
from builder.errors import InvalidArgumentError, ResourceExhaustedError
from builder.server.castore_server import create_castore_server

LIMIT = 10


def _symlinks(count: int, family: Family = Family.TVIX) -> Any:
    mod = family.castore
    symlink = getattr(mod, family.message_names()[2])
    return mod.Directory(symlinks=[symlink(name=b"l%07d" % i, target=b"t") for i in range(count)])


def _digest(message: Any) -> str:
    return str(Digest(blake3.blake3(message.SerializeToString(deterministic=True)).digest()))


def _rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM directories").fetchone()[0])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A castore server with the limit set to ``LIMIT``, over a real unix socket."""
    database = tmp_path / "dirs.sqlite"
    directories = SqliteDirectoryService(database)
    server, (url,), _ = create_castore_server(
        MemoryBlobService(),
        directories,
        [f"grpc+unix://{tmp_path / 'castore.sock'}"],
        max_workers=4,
        max_directory_entries=LIMIT,
    )
    server.start()
    try:
        yield url, database
    finally:
        server.stop(None).wait()
        directories.close()


@pytest.mark.parametrize("family", list(Family))
def test_put_over_the_limit_is_invalid_argument(served: tuple[str, Path], family: Family) -> None:
    url, database = served
    rpc = castore_rpc(family)
    channel = open_channel(url)
    try:
        stub = rpc.directory_grpc.DirectoryServiceStub(channel)
        leaf = _symlinks(LIMIT, family)
        assert stub.Put(iter([leaf])).root_digest == Digest.parse(_digest(leaf))
        before = _rows(database)
        huge = _symlinks(LIMIT + 1, family)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Put(iter([_symlinks(3, family), huge]))
    finally:
        channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"directory #1: directory {_digest(huge)} has {LIMIT + 1} entries, "
        f"more than the limit of {LIMIT}"
    )
    assert _rows(database) == before


def test_default_limit_applies_to_a_server_without_a_setting(tmp_path: Path) -> None:
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    server, (url,), _ = create_castore_server(
        MemoryBlobService(),
        directories,
        [f"grpc+unix://{tmp_path / 'castore.sock'}"],
        max_workers=4,
    )
    server.start()
    client = GrpcDirectoryService(url)
    try:
        huge = _symlinks(DEFAULT_MAX_DIRECTORY_ENTRIES + 1)
        stub = castore_rpc(Family.TVIX).directory_grpc.DirectoryServiceStub(client._channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Put(iter([huge]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"has {DEFAULT_MAX_DIRECTORY_ENTRIES + 1} entries" in (caught.value.details() or "")
    finally:
        client.close()
        server.stop(None).wait()
        directories.close()
    assert _rows(tmp_path / "dirs.sqlite") == 0


def test_client_get_refuses_an_oversized_directory(tmp_path: Path) -> None:
    """A server allowing more than the client does cannot push the client past its limit."""
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    server, (url,), _ = create_castore_server(
        MemoryBlobService(),
        directories,
        [f"grpc+unix://{tmp_path / 'castore.sock'}"],
        max_workers=4,
    )
    server.start()
    client = GrpcDirectoryService(url, max_entries=LIMIT)
    try:
        big = Directory(symlinks=tuple(SymlinkNode(b"l%02d" % i, b"t") for i in range(LIMIT + 1)))
        directories.put(big)
        for fetch in (client.get, lambda d: list(client.get_recursive(d))):
            with pytest.raises(ResourceExhaustedError) as caught:
                fetch(big.digest)
            assert str(caught.value) == (
                f"server sent a directory with {LIMIT + 1} entries for {big.digest}, "
                f"more than the limit of {LIMIT}"
            )
    finally:
        client.close()
        server.stop(None).wait()
        directories.close()


def test_local_putter_refuses_an_oversized_directory(tmp_path: Path) -> None:
    directories = SqliteDirectoryService(tmp_path / "dirs.sqlite")
    directories.max_entries = LIMIT
    try:
        big = Directory(symlinks=tuple(SymlinkNode(b"l%02d" % i, b"t") for i in range(LIMIT + 1)))
        putter = directories.put_multiple_start()
        with pytest.raises(InvalidArgumentError) as caught:
            putter.put(big)
        assert str(caught.value) == (
            f"directory #0 ({big.digest}) has {LIMIT + 1} entries, more than the limit of {LIMIT}"
        )
    finally:
        directories.close()
    assert _rows(tmp_path / "dirs.sqlite") == 0


def test_serve_takes_the_limit_as_an_option() -> None:
    parser = build_parser()
    base = ["serve", "--listen", "grpc+unix:///run/b.sock"]
    assert parser.parse_args(base).max_directory_entries == DEFAULT_MAX_DIRECTORY_ENTRIES
    assert parser.parse_args([*base, "--max-directory-entries", "7"]).max_directory_entries == 7

"""NAR rendering must equal Nix's own serialisation byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.memory import MemoryBlobService
from builder.castore.blobs.service import READ_CHUNK_SIZE
from builder.castore.directories.memory import MemoryDirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.nar import nar_hash, write_nar
from builder.castore.nodes import FileNode
from builder.errors import IntegrityError
from builder.store import nixbase32
from tests.blob_bytes import put_bytes
from tests.castore.test_fs_bridge import Tree, directory_trees, files, links, write_tree
from tests.requirements import require_nix


@pytest.fixture(scope="module", autouse=True)
def nix_tools() -> None:
    require_nix()


def nix_dump(path: Path) -> bytes:
    return subprocess.run(
        ["nix-store", "--dump", str(path)], check=True, capture_output=True
    ).stdout


def nix_hash_base32(path: Path) -> str:
    return subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def check_against_nix(path: Path, tmp: Path) -> None:
    """Our NAR of ``path`` after ingest equals Nix's dump, for a memory and an fs store."""
    reference = nix_dump(path)
    for blobs, directories in (
        (MemoryBlobService(), MemoryDirectoryService()),
        (FsBlobService(tmp / "blobs"), SqliteDirectoryService(tmp / "dirs.db")),
    ):
        node = ingest_path(path, blobs, directories)
        out = io.BytesIO()
        write_nar(node, out, blobs, directories)
        assert out.getvalue() == reference
        digest, size = nar_hash(node, blobs, directories)
        assert size == len(reference)
        assert digest == hashlib.sha256(reference).digest()
        # nix-hash hashes the NAR serialisation of the path, not its contents.
        assert nixbase32.encode(digest) == nix_hash_base32(path)
        directories.close()


@settings(max_examples=25, deadline=None)
@given(tree=st.one_of(directory_trees, files, links))
def test_nar_matches_nix_store_dump(tree: Tree) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_tree(tmp / "root", tree)
        check_against_nix(tmp / "root", tmp)


def test_single_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"Hello World!")
    check_against_nix(tmp_path / "f", tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    check_against_nix(tmp_path / "f", tmp_path)


def test_executable_file(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "x").chmod(0o755)
    check_against_nix(tmp_path / "x", tmp_path)


def test_file_larger_than_a_read_chunk(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(2 * READ_CHUNK_SIZE + 3))
    check_against_nix(tmp_path / "big", tmp_path)


def test_symlink_root(tmp_path: Path) -> None:
    (tmp_path / "l").symlink_to("/nix/store/somewhere")
    check_against_nix(tmp_path / "l", tmp_path)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    check_against_nix(tmp_path / "d", tmp_path)


def test_nested_directories_with_interleaved_kinds(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "b" / "c" / "empty").mkdir(parents=True)
    (root / "a").write_bytes(b"a")
    (root / "b" / "c" / "x").write_bytes(b"x" * 13)
    (root / "b" / "c" / "x").chmod(0o700)
    (root / "ba").symlink_to("b")
    (root / "c").symlink_to("/dangling")
    (root / "B").write_bytes(b"")
    os.mkdir(os.path.join(os.fsencode(root), b"\xff\xfe"))
    check_against_nix(root, tmp_path)


def test_known_nar_hash_of_an_empty_file() -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    node = FileNode(b"ignored", put_bytes(blobs, b""), 0)
    digest, size = nar_hash(node, blobs, directories)
    assert size == 112
    assert nixbase32.encode(digest) == "0ip26j2h11n1kgkz36rl4akv694yz65hr72q4kv4b3lxcbi65b3p"


def test_corrupt_blob_is_reported() -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    digest = put_bytes(blobs, b"right")
    blobs._blobs[digest] = b"wrong"
    with pytest.raises(IntegrityError):
        nar_hash(FileNode(b"f", digest, 5), blobs, directories)


@settings(max_examples=25, deadline=None)
@given(data=st.sampled_from([16, 20, 32, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_nix_base32_matches_nix_hash(data: bytes) -> None:
    algorithm = {16: "md5", 20: "sha1", 32: "sha256", 64: "sha512"}[len(data)]
    reference = subprocess.run(
        ["nix-hash", "--type", algorithm, "--to-base32", data.hex()],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert nixbase32.encode(data) == reference


def test_nix_base32_of_short_inputs() -> None:
    assert nixbase32.encode(b"") == ""
    assert nixbase32.encode(b"\x00") == "00"
    assert nixbase32.encode(b"\xff") == "7z"

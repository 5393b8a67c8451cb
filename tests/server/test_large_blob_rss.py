"""A 1 GiB blob through gRPC Put and Read while the server's memory stays flat.

The server runs as its own process so that its peak resident set (VmHWM) is
exactly what serving the blob cost; the data is generated and checked on the
fly on the client side, so neither side ever holds the blob.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.digest import Digest
from builder.castore.grpc.channel import open_channel
from builder.castore.wire import Family

BLOB_SIZE = 1 << 30
BLOCK_SIZE = 1 << 20
RSS_LIMIT = 150 << 20
ROOT = Path(__file__).resolve().parents[2]


def blocks() -> Iterator[bytes]:
    """1 GiB that does not repeat at any 1 MiB boundary, cheap to produce."""
    base = bytearray(os.urandom(BLOCK_SIZE))
    for counter in range(BLOB_SIZE // BLOCK_SIZE):
        base[:8] = counter.to_bytes(8, "little")
        yield bytes(base)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[tuple[str, int]]:
    socket_path = tmp_path / "castore.sock"
    url = f"grpc+unix://{socket_path}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.server.castore_server_main",
            str(tmp_path / "blobs"),
            str(tmp_path / "dirs.sqlite"),
            url,
        ],
        cwd=ROOT,
    )
    try:
        channel = open_channel(url)
        grpc.channel_ready_future(channel).result(timeout=30)
        channel.close()
        yield url, process.pid
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_one_gib_blob_keeps_server_memory_flat(server_url: tuple[str, int]) -> None:
    url, pid = server_url
    client = GrpcBlobService(url, Family.SNIX)
    try:
        idle = peak_rss(pid)
        started = time.monotonic()
        hasher = blake3.blake3()
        writer = client.open_write()
        for block in blocks():
            hasher.update(block)
            writer.write(block)
        digest = writer.close()
        assert digest == Digest(hasher.digest())
        uploaded = time.monotonic()

        reader = client.open_read(digest)
        assert reader is not None
        check = blake3.blake3()
        size = 0
        with reader:
            while data := reader.read(BLOCK_SIZE):
                check.update(data)
                size += len(data)
        assert size == BLOB_SIZE
        assert Digest(check.digest()) == digest
        finished = time.monotonic()

        peak = peak_rss(pid)
        print(
            f"server peak RSS {peak / (1 << 20):.1f} MiB (idle {idle / (1 << 20):.1f} MiB); "
            f"put {uploaded - started:.1f} s, "
            f"read {finished - uploaded:.1f} s"
        )
        assert peak < RSS_LIMIT
    finally:
        client.close()

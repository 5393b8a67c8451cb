"""Per-file cost of moving a tree of small files to and from a real ``builder serve``.

A tree of 10,000 files of a few hundred bytes to a few KiB in 100 directories
(on tmpfs /dev/shm when there is one, like both stores and the servers' data)
is imported into a local store and then:

- uploaded to a freshly started server that has none of it;
- uploaded again, the server now having everything;
- fetched back into an empty local store.

The references run in the same process on the same tree: ``tar`` of the tree
streamed through a unix socket to a reader (what moving the bytes costs at
least), and a minimal grpcio client on the plain generated stubs doing one
castore Put per blob on 4 threads (against a second fresh server), then one
Read per blob on 4 threads. Each figure is printed beside its reference and
the ratio; with ``--runs`` above one the median of the runs is printed.

Run: .venv/bin/python tests/benchmarks/bench_transfer.py [--runs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.castore.blobs.fs import FsBlobService
from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.copying import Castore, copy_missing
from builder.castore.digest import Digest
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs import fetch_closure
from builder.castore.fs.ingest import ingest_path
from builder.castore.grpc.channel import open_channel
from builder.castore.nodes import DirectoryNode, Node
from builder.proto.snix.castore.protos import rpc_blobstore_pb2 as blob_pb2
from builder.proto.snix.castore.protos import rpc_blobstore_pb2_grpc as blob_grpc

ROOT = Path(__file__).resolve().parents[2]
TREE_DIRS = 100
FILES_PER_DIR = 100
MIN_FILE = 200
MAX_FILE = 4096
REFERENCE_THREADS = 4
LISTENING = re.compile(r"listening on (\S+)")

GOAL_UPLOAD_SECONDS = 2.0
GOAL_UPLOAD_VS_TAR = 15.0
GOAL_REUPLOAD_SECONDS = 0.3
GOAL_FETCH_VS_GET = 1.2


def scratch_parent(requested: Path | None) -> Path | None:
    if requested is not None:
        return requested
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def make_tree(root: Path) -> list[Path]:
    """100 directories of 100 distinct files; returns the file paths."""
    rng = random.Random(0)
    pool = os.urandom(1 << 20)
    files = []
    for d in range(TREE_DIRS):
        directory = root / f"dir{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES_PER_DIR):
            size = rng.randrange(MIN_FILE, MAX_FILE + 1)
            start = rng.randrange(len(pool) - size)
            data = (d * FILES_PER_DIR + f).to_bytes(4, "little") + pool[start : start + size - 4]
            path = directory / f"file{f:03d}"
            path.write_bytes(data)
            files.append(path)
    return files


@contextmanager
def serving(data: Path) -> Iterator[str]:
    """A real ``builder serve`` on a unix socket, with its own data directory."""
    data.mkdir(parents=True)
    log = data / "server.log"
    env = {**os.environ, "BUILDER_DATA_DIR": str(data / "data")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "builder", "serve", "--listen", f"grpc+unix://{data}/s.sock"],
            env=env,
            stdout=sink,
            stderr=sink,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := LISTENING.search(log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def tar_through_socket(tree: Path) -> None:
    """``tar`` writes the tree into one end of a unix socket; a thread reads it all."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    received = 0

    def drain() -> None:
        nonlocal received
        while data := ours.recv(1 << 20):
            received += len(data)

    reader = threading.Thread(target=drain)
    reader.start()
    with theirs:
        subprocess.run(["tar", "-cf", "-", "-C", str(tree), "."], stdout=theirs, check=True)
    reader.join()
    ours.close()
    if received == 0:
        raise SystemExit("tar sent nothing")


def grpcio_put_each(address: str, files: list[Path]) -> None:
    channel = open_channel(address)
    stub = blob_grpc.BlobServiceStub(channel)

    def put(path: Path) -> None:
        stub.Put(iter([blob_pb2.BlobChunk(data=path.read_bytes())]))

    with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
        list(pool.map(put, files))
    channel.close()


def grpcio_get_each(address: str, digests: list[Digest]) -> None:
    channel = open_channel(address)
    stub = blob_grpc.BlobServiceStub(channel)

    def get(digest: Digest) -> int:
        return sum(len(c.data) for c in stub.Read(blob_pb2.ReadBlobRequest(digest=digest)))

    with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
        list(pool.map(get, digests))
    channel.close()


def remote(address: str) -> Castore:
    return Castore(GrpcBlobService(address), GrpcDirectoryService(address))


def upload(address: str, root: Node, local: Castore) -> None:
    server = remote(address)
    copy_missing([root], local, server)
    server.blobs.close()
    server.directories.close()


def fetch(address: str, root: Node, local: Castore) -> None:
    server = remote(address)
    copy_missing([root], server, local)
    server.blobs.close()
    server.directories.close()


def one_run(scratch: Path, tree: Path, files: list[Path], number: int) -> dict[str, float]:
    run = scratch / f"run{number}"
    local_blobs = FsBlobService(run / "local" / "blobs")
    local_dirs = SqliteDirectoryService(run / "local" / "dirs.sqlite")
    root = ingest_path(tree, local_blobs, local_dirs)
    assert isinstance(root, DirectoryNode)
    digests = sorted(
        {f.digest for d in fetch_closure(root.digest, local_dirs).values() for f in d.files}
    )
    figures: dict[str, float] = {}
    figures["tar"] = timed(lambda: tar_through_socket(tree))
    with serving(run / "ref-server") as address:
        figures["put"] = timed(lambda: grpcio_put_each(address, files))
        figures["get"] = timed(lambda: grpcio_get_each(address, digests))
    with serving(run / "server") as address:
        local = Castore(local_blobs, local_dirs)
        figures["upload"] = timed(lambda: upload(address, root, local))
        figures["reupload"] = timed(lambda: upload(address, root, local))
        empty = Castore(
            FsBlobService(run / "empty" / "blobs"),
            SqliteDirectoryService(run / "empty" / "dirs.sqlite"),
        )
        figures["fetch"] = timed(lambda: fetch(address, root, empty))
        empty.directories.close()
    local_dirs.close()
    shutil.rmtree(run)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="scratch directory (default: /dev/shm)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=scratch_parent(args.dir)) as raw:
        scratch = Path(raw)
        tree = scratch / "tree"
        files = make_tree(tree)
        runs = [one_run(scratch, tree, files, n) for n in range(args.runs)]
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    count = len(files)
    print(f"{count} files in {TREE_DIRS} directories on {scratch.parent}, runs: {args.runs}")
    print(f"reference: tar through a unix socket      {med['tar']:8.3f} s")
    print(f"reference: grpcio Put per blob, 4 threads {med['put']:8.3f} s")
    print(f"reference: grpcio Read per blob, 4 threads{med['get']:8.3f} s")
    print(
        f"upload, all missing     {med['upload']:8.3f} s  {count / med['upload']:8.0f} files/s  "
        f"{med['upload'] / med['tar']:6.1f}x tar  {med['upload'] / med['put']:5.2f}x grpcio Put  "
        f"(goal <= {GOAL_UPLOAD_SECONDS} s, <= {GOAL_UPLOAD_VS_TAR}x tar)"
    )
    per_10k = med["reupload"] * 10_000 / count
    print(
        f"upload, server has all  {med['reupload']:8.3f} s  ({per_10k:.3f} s per 10k files; "
        f"goal <= {GOAL_REUPLOAD_SECONDS} s)"
    )
    print(
        f"fetch into empty store  {med['fetch']:8.3f} s  {med['fetch'] / med['get']:5.2f}x "
        f"grpcio Read (goal <= {GOAL_FETCH_VS_GET}x)"
    )


if __name__ == "__main__":
    main()

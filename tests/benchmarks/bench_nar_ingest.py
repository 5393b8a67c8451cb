"""NAR ingest against Nix unpacking the same archive.

Two archives, each made by ``nix-store --dump`` of a generated tree: (a) 10,000
small files (100 directories of 100 files of 0-4 KiB, one in ten executable)
and (b) one 256 MiB file. Ours ingests the archive file into a fresh default
store (FsBlobService plus SqliteDirectoryService, blobs made durable as one
batch); the peer is ``nix-store --restore`` into a fresh directory, reading the
same file on stdin. ``nix-store --restore`` flushes nothing to disk, so a
second peer adds ``sync -f`` on its directory, which is what our store pays
for. Each contender runs once to warm up, then three times taking turns
(pending writeback flushed before each run); medians are reported, with the
ratio peer time / our time (above 1: ours is faster).

Run: .venv/bin/python tests/benchmarks/bench_nar_ingest.py [--dir DIR] [--only tree|file]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.store.nar_ingest import ingest_nar

TREE_DIRS = 100
FILES_PER_DIR = 100
MAX_SMALL_FILE = 4096
BIG_FILE_SIZE = 256 << 20
RUNS = 3
OURS = "ours: ingest_nar"
PEER = "nix-store --restore"

Run = Callable[[Path], object]


def make_tree(root: Path) -> None:
    rng = random.Random(0)
    pool = os.urandom(1 << 20)
    for d in range(TREE_DIRS):
        directory = root / f"dir{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES_PER_DIR):
            size = rng.randrange(MAX_SMALL_FILE + 1)
            start = rng.randrange(len(pool) - size)
            data = ((d * FILES_PER_DIR + f).to_bytes(4, "little") + pool[start : start + size])[
                :size
            ]
            path = directory / f"file{f:03d}"
            path.write_bytes(data)
            if f % 10 == 0:
                path.chmod(0o755)


def make_big_file(path: Path) -> None:
    block = bytearray(os.urandom(16 << 20))
    with open(path, "wb") as out:
        for i in range(BIG_FILE_SIZE // len(block)):
            block[:8] = i.to_bytes(8, "little")
            out.write(block)


def dump(source: Path, nar: Path) -> int:
    with open(nar, "wb") as out:
        subprocess.run(["nix-store", "--dump", str(source)], check=True, stdout=out)
    return nar.stat().st_size


def ours(nar: Path) -> Run:
    def run(dest: Path) -> object:
        directories = SqliteDirectoryService(dest / "directories.sqlite")
        blobs = FsBlobService(dest / "blobs")
        try:
            with open(nar, "rb") as source:
                return ingest_nar(source, b"bench", blobs, directories, nar.stat().st_size)
        finally:
            directories.close()
            blobs.close()

    return run


def restore(nar: Path, sync: bool) -> Run:
    def run(dest: Path) -> object:
        with open(nar, "rb") as source:
            subprocess.run(["nix-store", "--restore", str(dest / "out")], stdin=source, check=True)
        if sync:
            subprocess.run(["sync", "-f", str(dest)], check=True)
        return None

    return run


def median_times(contenders: list[tuple[str, Run]], scratch: Path) -> dict[str, float]:
    """Warm up once, then RUNS rounds taking turns, each into a fresh directory."""
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for attempt in range(RUNS + 1):
        for name, run in contenders:
            dest = scratch / "run"
            dest.mkdir()
            os.sync()
            start = time.perf_counter()
            run(dest)
            elapsed = time.perf_counter() - start
            shutil.rmtree(dest)
            if attempt:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(what: str, nar: Path, scratch: Path) -> None:
    size = nar.stat().st_size
    times = median_times(
        [
            (OURS, ours(nar)),
            (PEER, restore(nar, sync=False)),
            (PEER + " + sync -f", restore(nar, sync=True)),
        ],
        scratch,
    )
    mine = times[OURS]
    for who, seconds in times.items():
        line = f"{what:<18} {who:<30} {seconds:8.3f} s {size / seconds / 1e6:8.1f} MB/s"
        if who != OURS:
            line += f"   peer/ours {seconds / mine:5.2f}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="scratch directory (default: system temp)")
    parser.add_argument("--only", choices=["tree", "file"], help="run one archive only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-nar-ingest-", dir=args.dir))
    try:
        print(f"cpus: {os.cpu_count()}, scratch: {work}", flush=True)
        if args.only != "file":
            make_tree(work / "tree")
            nar = work / "tree.nar"
            dump(work / "tree", nar)
            shutil.rmtree(work / "tree")
            bench(f"{TREE_DIRS * FILES_PER_DIR} small files", nar, work)
            nar.unlink()
        if args.only != "tree":
            make_big_file(work / "big")
            nar = work / "big.nar"
            dump(work / "big", nar)
            (work / "big").unlink()
            bench(f"{BIG_FILE_SIZE >> 20} MiB file", nar, work)
            nar.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

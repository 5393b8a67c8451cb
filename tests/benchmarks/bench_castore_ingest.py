"""Ingest throughput against the tools a user would compare it with.

A 1 GiB file is ingested into the default store (FsBlobService plus
SqliteDirectoryService) and compared with hashing it by ``b3sum`` (single- and
multi-threaded) and with ``cp`` followed by ``sync --data`` of the copy: b3sum
only reads, while a store that keeps its blobs durably must also write them
and wait for the disk, which ``cp + sync`` times alone. A tree of 50,000
small files is ingested and compared with ``cp -a`` onto the same disk.
Page caches cannot be dropped here, so every contender is run once to warm
up and then timed three times from the same warm state (pending writeback
flushed first); the median is reported.

Run: .venv/bin/python tests/benchmarks/bench_castore_ingest.py [--dir DIR]
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
from builder.castore.fs.ingest import ingest_path

BIG_FILE_SIZE = 1 << 30
PATTERN_SIZE = 16 << 20
TREE_DIRS = 500
FILES_PER_DIR = 100
MAX_SMALL_FILE = 4096
RUNS = 3
OURS = "ours: ingest"


def make_big_file(path: Path) -> None:
    """Random-looking but cheap: one random block, each copy made distinct by its first bytes."""
    block = bytearray(os.urandom(PATTERN_SIZE))
    with open(path, "wb") as out:
        for i in range(BIG_FILE_SIZE // PATTERN_SIZE):
            block[:8] = i.to_bytes(8, "little")
            out.write(block)


def make_tree(root: Path) -> int:
    """500 directories of 100 distinct files of 0-4 KiB; returns the total content size."""
    rng = random.Random(0)
    pool = os.urandom(1 << 20)
    total = 0
    for d in range(TREE_DIRS):
        directory = root / f"dir{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES_PER_DIR):
            size = rng.randrange(MAX_SMALL_FILE + 1)
            start = rng.randrange(len(pool) - size)
            data = (d * FILES_PER_DIR + f).to_bytes(4, "little") + pool[start : start + size]
            data = data[:size]
            path = directory / f"file{f:03d}"
            path.write_bytes(data)
            if f % 10 == 0:
                path.chmod(0o755)
            total += size
    return total


Contender = tuple[str, Callable[[Path], object]]


def median_times(contenders: list[Contender], scratch: Path) -> dict[str, float]:
    """Warm each up once, then time RUNS rounds, the contenders taking turns.

    Taking turns spreads any background load over all of them alike. Every
    run writes into a fresh directory, deleted (untimed) straight after, so
    each starts with the same free memory and no writeback pending.
    """
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for attempt in range(RUNS + 1):
        for name, run in contenders:
            dest = scratch / "run"
            os.sync()
            start = time.perf_counter()
            run(dest)
            elapsed = time.perf_counter() - start
            shutil.rmtree(dest, ignore_errors=True)
            if attempt:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def ingest(source: Path) -> Callable[[Path], object]:
    def run(store: Path) -> object:
        directories = SqliteDirectoryService(store / "directories.sqlite")
        try:
            return ingest_path(source, FsBlobService(store / "blobs"), directories)
        finally:
            directories.close()

    return run


def command(*argv: str) -> Callable[[Path], object]:
    """Run a tool; a ``{dest}`` argument is replaced by the run's fresh directory."""
    return lambda dest: subprocess.run(
        [str(dest) if arg == "{dest}" else arg for arg in argv],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def durable_copy(source: Path) -> Callable[[Path], object]:
    """What any durable ingest must at least do: write the bytes again and flush them to disk."""
    script = 'mkdir -p "$1" && cp --reflink=never "$2" "$1/copy" && sync --data "$1/copy"'
    return lambda dest: subprocess.run(
        ["sh", "-c", script, "sh", str(dest), str(source)], check=True
    )


def report(what: str, times: dict[str, float], size: int) -> None:
    """One line per contender; ours/peer is the throughput ratio (>1: ours is faster)."""
    ours = times[OURS]
    for who, seconds in times.items():
        line = f"{what:<12} {who:<24} {seconds:8.3f} s {size / seconds / 1e6:9.1f} MB/s"
        if who != OURS:
            line += f"   ours/peer {seconds / ours:5.2f}"
        print(line, flush=True)


def bench_big_file(work: Path) -> None:
    big = work / "big.bin"
    make_big_file(big)
    times = median_times(
        [
            (OURS, ingest(big)),
            ("b3sum --num-threads 1", command("b3sum", "--num-threads", "1", str(big))),
            ("b3sum", command("b3sum", str(big))),
            ("cp + sync", durable_copy(big)),
        ],
        work,
    )
    report("1 GiB file", times, BIG_FILE_SIZE)
    big.unlink()


def bench_tree(work: Path) -> None:
    tree = work / "tree"
    size = make_tree(tree)
    times = median_times(
        [(OURS, ingest(tree)), ("cp -a", command("cp", "-a", str(tree), "{dest}"))],
        work,
    )
    report(f"{TREE_DIRS * FILES_PER_DIR} files", times, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="scratch directory (default: system temp)")
    parser.add_argument("--only", choices=["file", "tree"], help="run one half")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.dir))
    try:
        print(f"cpus: {os.cpu_count()}, scratch: {work}", flush=True)
        if args.only != "tree":
            bench_big_file(work)
        if args.only != "file":
            bench_tree(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Cold and warm materialisation against ``cp -a`` of the same tree on the same filesystem.

Run as ``.venv/bin/python tests/benchmarks/bench_matcache.py [workdir]``. The
tree is 200 directories of 100 files, sizes spread around 25 KB (about
500 MB), contents random and distinct per file. Everything runs with a warm
page cache, for ``cp -a`` as for the cache, so the comparison is of the work
done, not of the disk.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import Node
from builder.executor.matcache.cache import MaterialisationCache
from builder.executor.removal import remove_tree

DIRECTORIES = 200
FILES_PER_DIRECTORY = 100
MEAN_SIZE = 25_000
COLD_RUNS = 3
WARM_RUNS = 50


def make_tree(root: Path) -> int:
    """Write the tree; slices of one random pool keep generation fast and contents distinct."""
    rng = random.Random(20_000)
    pool = rng.randbytes(64 << 20)
    total = 0
    for d in range(DIRECTORIES):
        directory = root / f"pkg-{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES_PER_DIRECTORY):
            size = rng.randint(0, 2 * MEAN_SIZE)
            start = rng.randrange(0, len(pool) - size)
            header = f"{d}/{f}\n".encode()
            path = directory / f"file-{f:03d}"
            path.write_bytes(header + pool[start : start + size])
            if f % 10 == 0:
                path.chmod(0o755)
            total += len(header) + size
    return total


def timed_ms(action: Callable[[], object]) -> float:
    """Wall time of ``action``, started with no dirty pages left by the previous run."""
    os.sync()
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def bench_cp(source: Path, work: Path) -> float:
    timings = []
    for run in range(COLD_RUNS):
        dest = work / f"cp-{run}"
        timings.append(timed_ms(lambda d=dest: subprocess.run(["cp", "-a", source, d], check=True)))
        remove_tree(os.fsencode(dest))
    return statistics.median(timings)


def bench_cold(
    node: Node, blobs: FsBlobService, directories: SqliteDirectoryService, work: Path
) -> float:
    timings = []
    for run in range(COLD_RUNS):
        root = work / f"cache-{run}"
        cache = MaterialisationCache(root, blobs, directories, max_bytes=4 << 30)
        timings.append(timed_ms(lambda c=cache: c.acquire(node).release()))
        cache.close()
        remove_tree(os.fsencode(root))
    return statistics.median(timings)


def bench_warm(
    node: Node, blobs: FsBlobService, directories: SqliteDirectoryService, work: Path
) -> float:
    cache = MaterialisationCache(work / "cache-warm", blobs, directories, max_bytes=4 << 30)
    cache.acquire(node).release()
    timings = []
    for _ in range(WARM_RUNS):
        start = time.perf_counter()
        cache.acquire(node).release()
        timings.append((time.perf_counter() - start) * 1000)
    cache.close()
    return statistics.median(timings)


def main() -> None:
    parent = sys.argv[1] if len(sys.argv) > 1 else None
    work = Path(tempfile.mkdtemp(prefix="bench-matcache-", dir=parent))
    try:
        source = work / "source"
        total = make_tree(source)
        files = DIRECTORIES * FILES_PER_DIRECTORY
        print(f"tree: {files} files in {DIRECTORIES} directories, {total / 1e6:.0f} MB at {work}")
        blobs = FsBlobService(work / "store" / "blobs")
        directories = SqliteDirectoryService(work / "store" / "directories.sqlite")
        start = time.perf_counter()
        node = ingest_path(source, blobs, directories)
        print(f"ingest: {(time.perf_counter() - start) * 1000:.0f} ms")
        cp_ms = bench_cp(source, work)
        cold_ms = bench_cold(node, blobs, directories, work)
        warm_ms = bench_warm(node, blobs, directories, work)
        print(f"cp -a (median of {COLD_RUNS}): {cp_ms:.0f} ms")
        print(f"cold materialisation (median of {COLD_RUNS}): {cold_ms:.0f} ms")
        print(f"cold / cp -a: {cold_ms / cp_ms:.2f} (goal <= 1.5)")
        print(f"warm acquisition (median of {WARM_RUNS}): {warm_ms:.3f} ms (goal < 10)")
        print(f"cp -a / warm: {cp_ms / warm_ms:.0f}x")
        directories.close()
    finally:
        remove_tree(os.fsencode(work))


if __name__ == "__main__":
    main()

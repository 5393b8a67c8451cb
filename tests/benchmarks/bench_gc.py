"""Garbage collection of the default store against deleting the same files with ``find``, same run.

A fresh data directory per round holds a tree of 10,000 small files in 100
directories (FsBlobService plus SqliteDirectoryService), imported once. Each
round times, in process:

- a collection that keeps everything (the tree pinned): listing, marking and
  the sweep's bookkeeping, no removal;
- a collection that removes everything (nothing pinned, minimum age 0):
  10,000 blobs renamed away, checked and unlinked, 101 directories deleted,
  shard directories flushed.

The reference is ``find BLOBS -type f -delete`` followed by ``sync -f`` on a
copy of the same blob directory: the least any removal of those files costs.
Medians of the rounds are printed.

Run: .venv/bin/python tests/benchmarks/bench_gc.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.castore.digest import Digest
from builder.castore.fs.ingest import ingest_path
from builder.gc.collector import CollectionReport, store_collector
from builder.gc.pins import Pins
from builder.store.store import Store

TREE_DIRS = 100
FILES_PER_DIR = 100
ROUNDS = 3


def make_tree(root: Path) -> None:
    for d in range(TREE_DIRS):
        directory = root / f"d{d:03}"
        directory.mkdir(parents=True)
        for f in range(FILES_PER_DIR):
            (directory / f"f{f:03}").write_bytes(f"file {d} {f}\n".encode() * (1 + f % 7))


def collect(data: Path, pin: bytes | None) -> tuple[float, CollectionReport]:
    with Store.open(None, data) as store:
        pins = Pins(data / "pins.sqlite")
        try:
            if pin is not None:
                pins.pin(Digest(pin))
            collector = store_collector(store, store.results, pins)
            start = time.perf_counter()
            report = collector.collect(min_age=0)
            return time.perf_counter() - start, report
        finally:
            pins.close()


def one_round(source: Path, work: Path) -> tuple[float, float, float]:
    data = work / "data"
    with Store.open(None, data) as store:
        node = ingest_path(source, store.blobs, store.directories)
    subprocess.run(["sync", "-f", str(data)], check=True)
    kept, report = collect(data, bytes(node.digest))
    assert report.blobs_removed == 0
    copy = work / "copy"
    shutil.copytree(data / "blobs", copy, ignore=shutil.ignore_patterns("tmp"))
    (data / "pins.sqlite").unlink()
    subprocess.run(["sync", "-f", str(data)], check=True)
    removed, report = collect(data, None)
    assert report.blobs_removed == TREE_DIRS * FILES_PER_DIR, report
    start = time.perf_counter()
    subprocess.run(["find", str(copy), "-type", "f", "-delete"], check=True)
    subprocess.run(["sync", "-f", str(copy)], check=True)
    peer = time.perf_counter() - start
    shutil.rmtree(work)
    return kept, removed, peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to work (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        source = Path(tmp) / "source"
        make_tree(source)
        rounds = [one_round(source, Path(tmp) / f"round-{i}") for i in range(ROUNDS)]
    kept, removed, peer = (statistics.median(column) for column in zip(*rounds, strict=True))
    files = TREE_DIRS * FILES_PER_DIR
    print(f"collection keeping {files} blobs:      {kept:7.3f} s")
    print(f"collection removing {files} blobs:     {removed:7.3f} s")
    print(f"find -delete + sync of the same files: {peer:7.3f} s")


if __name__ == "__main__":
    main()

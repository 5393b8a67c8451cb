"""Re-importing an unchanged tree against its first import and against b3sum, same run.

Two sources are imported into the default store (FsBlobService plus
SqliteDirectoryService, in a fresh data directory per round): a tree of
10,000 small files and one 1 GiB file. Each round times the first import,
then an import of the same, unchanged source into the same store, and one
more without the import record; the same first import and re-import are then
run through ``builder castore import``, start-up included. ``b3sum`` over the
same files is the reference. The goal is a re-import costing at most
0.2x the first import, and an unchanged large file neither hashed nor copied
again.

Sources are written once, before any timing, and then left to age beyond the
import record's racy window: a file changed so recently that a change within
the same timestamp tick could go unseen is re-hashed by design, and real
sources are rarely written in the seconds before they are imported. Page
caches cannot be dropped here, so everything is read once to warm up first,
pending writeback is flushed before each timed step, and medians of the
rounds are printed.

Run: .venv/bin/python tests/benchmarks/bench_reimport.py [--dir DIR] [--only tree|file]
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
from typing import TypeVar

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.import_record import RACY_WINDOW_NS, ImportRecord
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import Node

CHECKOUT = Path(__file__).resolve().parents[2]
BIG_FILE_SIZE = 1 << 30
PATTERN_SIZE = 16 << 20
TREE_DIRS = 100
FILES_PER_DIR = 100
MAX_SMALL_FILE = 4096
ROUNDS = 3

Result = TypeVar("Result")


def make_big_file(path: Path) -> None:
    """Random-looking but cheap: one random block, each copy made distinct by its first bytes."""
    block = bytearray(os.urandom(PATTERN_SIZE))
    with open(path, "wb") as out:
        for i in range(BIG_FILE_SIZE // PATTERN_SIZE):
            block[:8] = i.to_bytes(8, "little")
            out.write(block)


def make_tree(root: Path) -> list[Path]:
    """100 directories of 100 distinct files of 0-4 KiB, a tenth of them executable."""
    rng = random.Random(0)
    pool = os.urandom(1 << 20)
    files = []
    for d in range(TREE_DIRS):
        directory = root / f"dir{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES_PER_DIR):
            size = rng.randrange(MAX_SMALL_FILE + 1)
            start = rng.randrange(len(pool) - size)
            data = (d * FILES_PER_DIR + f).to_bytes(4, "little") + pool[start : start + size]
            path = directory / f"file{f:03d}"
            path.write_bytes(data[:size])
            if f % 10 == 0:
                path.chmod(0o755)
            files.append(path)
    return files


class Store:
    """The embedded store's services and import record in one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.blobs = FsBlobService(data_dir / "blobs")
        self.directories = SqliteDirectoryService(data_dir / "directories.sqlite")
        self.record = ImportRecord(data_dir / "imports.sqlite")

    def ingest(self, source: Path, record: bool = True) -> Node:
        return ingest_path(
            source, self.blobs, self.directories, record=self.record if record else None
        )

    def close(self) -> None:
        self.record.close()
        self.directories.close()
        self.blobs.close()


def timed(run: Callable[[], Result]) -> tuple[float, Result]:
    os.sync()
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def b3sum(files: list[Path]) -> Callable[[], object]:
    argv = ["b3sum", *map(str, files)]
    return lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def cli_import(source: Path, data_dir: Path) -> Callable[[], object]:
    """``builder castore import`` of this checkout, start-up included."""
    argv = [sys.executable, "-m", "builder", "castore", "import", "--data-dir", str(data_dir)]
    return lambda: subprocess.run(
        [*argv, str(source)], check=True, stdout=subprocess.DEVNULL, cwd=CHECKOUT
    )


def bench(what: str, source: Path, files: list[Path], scratch: Path) -> None:
    """Rounds of b3sum, first import and re-imports with and without the record.

    Every round starts from an empty data directory; the re-import without a
    record shows what the record saves, and the same two imports through the
    command line show what a user waits for, interpreter start-up included.
    """
    reference = b3sum(files)
    reference()
    times: dict[str, list[float]] = {
        "b3sum": [],
        "first import": [],
        "re-import": [],
        "re-import, no record": [],
        "CLI first import": [],
        "CLI re-import": [],
    }
    hits = []
    for _ in range(ROUNDS):
        data_dir = scratch / "data"
        store = Store(data_dir)
        try:
            times["b3sum"].append(timed(reference)[0])
            seconds, first = timed(lambda s=store: s.ingest(source))
            times["first import"].append(seconds)
            before = store.record.hits
            seconds, again = timed(lambda s=store: s.ingest(source))
            times["re-import"].append(seconds)
            hits.append(store.record.hits - before)
            seconds, unrecorded = timed(lambda s=store: s.ingest(source, record=False))
            times["re-import, no record"].append(seconds)
            assert again == first == unrecorded, "every import must give the same root node"
        finally:
            store.close()
        shutil.rmtree(data_dir)
        command = cli_import(source, data_dir)
        times["CLI first import"].append(timed(command)[0])
        times["CLI re-import"].append(timed(command)[0])
        shutil.rmtree(data_dir)
    medians = {who: statistics.median(values) for who, values in times.items()}
    first_import, reference_time = medians["first import"], medians["b3sum"]
    print(f"{what}: {len(files)} files, re-import found {min(hits)} in the record", flush=True)
    for who, seconds in medians.items():
        print(
            f"  {who:<22} {seconds:8.3f} s   {seconds / reference_time:7.2f}x b3sum"
            f"   {seconds / first_import:6.3f}x first import",
            flush=True,
        )
    verdict = "met" if medians["re-import"] <= 0.2 * first_import else "NOT met"
    print(f"  goal: re-import <= 0.2x first import: {verdict}", flush=True)
    cli_ratio = medians["CLI re-import"] / medians["CLI first import"]
    print(f"  CLI re-import / CLI first import {cli_ratio:6.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="scratch directory (default: system temp)")
    parser.add_argument("--only", choices=["file", "tree"], help="run one half")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-reimport-", dir=args.dir))
    try:
        print(f"cpus: {os.cpu_count()}, scratch: {work}", flush=True)
        sources = []
        if args.only != "file":
            tree = work / "tree"
            sources.append((f"{TREE_DIRS * FILES_PER_DIR} small files", tree, make_tree(tree)))
        if args.only != "tree":
            big = work / "big.bin"
            make_big_file(big)
            sources.append(("1 GiB file", big, [big]))
        # Let every source age past the racy window, so that the first import
        # records it as an unchanged source would be recorded.
        time.sleep(RACY_WINDOW_NS / 1e9)
        for what, source, files in sources:
            bench(what, source, files, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

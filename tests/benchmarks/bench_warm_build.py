"""Warm builds with a big input tree, and trivial builds through two job slots, against Nix.

Two goals, each printed as a ratio against its reference from the same run:

1. A warm DoBuild whose input is a 9,000-file tree (already in the store and
   in the materialisation cache, a different command each time, result
   cache off) should cost at most 1.5x the same server's trivial-input build:
   the p50s are timed interleaved, run by run, on one server, so that a
   per-file cost left on the warm path shows up as the ratio. A baseline
   server's pair is timed after ours, not interleaved with it.
2. 60 trivial builds on a server with ``--jobs 2``, sent by 4 concurrent
   clients, should reach at least 1.2x the builds per second of one
   ``nix-store --realise --max-jobs 2`` of 60 trivial derivations.

The tree is written straight into the server's data directory before the
server starts (uploading it is another benchmark's subject). With
``--baseline REV`` a second server runs an earlier commit and joins both
measurements, so before and after come from the same run. Needs root (Nix
without a daemon), nix-bin and busybox.

    .venv/bin/python tests/benchmarks/bench_warm_build.py [--runs N] [--rounds R] [--baseline REV]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.castore.fs.ingest import ingest_path
from builder.castore.wire import Family, node_to_proto
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from builder.store.store import Store
from tests.benchmarks.bench_build import (
    INPUT_NAME,
    NIX_SCRIPT,
    NixRealiser,
    build_request,
    do_build,
    export_commit,
    latencies,
    latency_figure,
    row,
    served,
)
from tests.benchmarks.nix_peer import instantiate, nix_env

TOP_DIRECTORIES = 30
SUBDIRECTORIES = 22
FILES_PER_SUBDIRECTORY = 13
FILES_PER_TOP = 14
BATCH = 60
CLIENTS = 4
JOBS = 2
BIG_NAME = "2" * 32 + "-bench-tree"


def make_tree(root: Path) -> int:
    """9,000 small files in 690 directories, contents distinct; returns the file count."""
    files = 0
    for t in range(TOP_DIRECTORIES):
        top = root / f"pkg-{t:02d}"
        top.mkdir(parents=True)
        for f in range(FILES_PER_TOP):
            (top / f"file-{f:02d}").write_text(f"{t}/{f}\n" * (1 + f * 7))
            files += 1
        for s in range(SUBDIRECTORIES):
            sub = top / f"sub-{s:02d}"
            sub.mkdir()
            for f in range(FILES_PER_SUBDIRECTORY):
                path = sub / f"file-{f:02d}"
                path.write_text(f"{t}/{s}/{f}\n" * (1 + f * 11))
                if f % 5 == 0:
                    path.chmod(0o755)
                files += 1
    return files


def seed_store(data_dir: Path, sources: dict[bytes, Path]) -> dict[bytes, Any]:
    """Ingest each source into the embedded store the server will open; the root entries."""
    entries = {}
    with Store.open(None, data_dir) as store:
        for name, source in sources.items():
            node = ingest_path(source, store.blobs, store.directories, name)
            entries[name] = node_to_proto(node, Family.SNIX)
    return entries


def batch_seconds(build: Callable[[str], None], tag: str) -> float:
    """Seconds for CLIENTS threads to take BATCH builds between them."""
    numbers = iter(range(BATCH))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client() -> None:
        try:
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    return
                build(f"{tag}-{number}")
        except BaseException as error:  # re-raised on the main thread below
            failures.append(error)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return elapsed


def nix_batch_seconds(drvs: list[str], outputs: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(
        ["nix-store", "--realise", "--max-jobs", str(JOBS), *drvs],
        env=nix_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    outputs.extend(out.stdout.split())
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="timed runs per contender")
    parser.add_argument("--rounds", type=int, default=5, help="batches of 60 per contender")
    parser.add_argument("--baseline", metavar="REV", help="also time a server at this commit")
    args = parser.parse_args()

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-warm-build-")))
        small, big = tmp / "small", tmp / "big"
        small.mkdir()
        (small / "msg").write_text("a small input, materialised once and reused\n")
        files = make_tree(big)
        sources = {INPUT_NAME.encode(): small, BIG_NAME.encode(): big}
        trees = {"ours": Path(__file__).resolve().parents[2]}
        if args.baseline:
            trees["baseline"] = export_commit(args.baseline, tmp / "baseline-tree")
        stubs, inputs = {}, {}
        for label, tree in trees.items():
            root = tmp / label
            root.mkdir()
            inputs[label] = seed_store(root / "data", sources)
            server = stack.enter_context(
                served(
                    root / "run",
                    "--no-result-cache",
                    "--jobs",
                    str(JOBS),
                    "--data-dir",
                    str(root / "data"),
                    tree=tree,
                )
            )
            stubs[label] = snix_rpc.BuildServiceStub(server.channel)

        counter = itertools.count()
        # Each server's pair is timed on its own: interleaved with the other
        # server, one server's trivial build would always follow the other's
        # tree build and inherit the state that leaves behind.
        figures = {}
        for label in trees:

            def trivial(label: str = label) -> None:
                entry = inputs[label][INPUT_NAME.encode()]
                do_build(stubs[label], build_request(entry, str(next(counter))))

            def warm_tree(label: str = label) -> None:
                entry = inputs[label][BIG_NAME.encode()]
                do_build(stubs[label], build_request(entry, str(next(counter))))

            pair = {f"{label} trivial": trivial, f"{label} tree": warm_tree}
            figures |= latencies(pair, args.runs)

        nix_workdir = tmp / "nix"
        nix_workdir.mkdir()
        drvs = instantiate(nix_workdir, BATCH * (args.rounds + 1), "bench-batch", NIX_SCRIPT)
        nix = NixRealiser(drvs)
        stack.callback(nix.delete_all)
        nix_outputs: list[str] = []
        batches = [drvs[i * BATCH : (i + 1) * BATCH] for i in range(args.rounds + 1)]
        nix_batch_seconds(batches[0], nix_outputs)
        for label in trees:
            batch_seconds(lambda tag, label=label: _trivial(stubs, inputs, label, tag), "warm")
        contenders = ["nix", *trees]
        batch_times: dict[str, list[float]] = {label: [] for label in contenders}
        for round_ in range(args.rounds):
            # Rotated, so that no contender always follows the same other one.
            shift = round_ % len(contenders)
            for label in contenders[shift:] + contenders[:shift]:
                if label == "nix":
                    seconds = nix_batch_seconds(batches[round_ + 1], nix_outputs)
                else:
                    seconds = batch_seconds(
                        lambda tag, label=label: _trivial(stubs, inputs, label, tag),
                        f"round-{round_}",
                    )
                batch_times[label].append(seconds)
        # delete_all removes what NixRealiser itself realised; these are the batches'.
        subprocess.run(
            ["nix-store", "--delete", *nix_outputs], env=nix_env(), check=True, capture_output=True
        )

    print(f"1. Warm build, {files}-file input vs trivial input, same server, {args.runs} runs")
    for label in trees:
        trivial_p50 = figures[f"{label} trivial"].p50
        tree_p50 = figures[f"{label} tree"].p50
        row(f"{label}: DoBuild, trivial input", latency_figure(figures[f"{label} trivial"]))
        row(f"{label}: DoBuild, {files}-file input tree", latency_figure(figures[f"{label} tree"]))
        row(f"{label}: tree / trivial (p50)", f"{tree_p50 / trivial_p50:.2f} (goal <= 1.5)")
    print(f"2. {BATCH} trivial builds, --jobs {JOBS}, {CLIENTS} clients, median of {args.rounds}")
    nix_rate = BATCH / statistics.median(batch_times["nix"])
    row(f"peer: one nix-store --realise --max-jobs {JOBS}", f"{nix_rate:6.1f} builds/s")
    for label in trees:
        rate = BATCH / statistics.median(batch_times[label])
        row(f"{label}: DoBuild from {CLIENTS} clients", f"{rate:6.1f} builds/s")
        row(f"{label} / nix", f"{rate / nix_rate:.2f} (goal >= 1.2)")


def _trivial(stubs: dict[str, Any], inputs: dict[str, Any], label: str, tag: str) -> None:
    do_build(stubs[label], build_request(inputs[label][INPUT_NAME.encode()], tag))


if __name__ == "__main__":
    main()

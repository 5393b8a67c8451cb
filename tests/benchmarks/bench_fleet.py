"""Builds per second of one, two and three builders on one S3 store, and what they ask of it.

Each fleet size starts fresh builders (empty near caches, empty
materialisation caches) on a bucket of its own, with the store composition of
the Kubernetes ConfigMap. A client uploads one small input tree through the
first builder, then sends distinct builds reading it, spread round-robin over
the builders by a fixed number of concurrent callers, and times them (cold
pass). The same requests are then sent again, each to the next builder over,
so that with two or more builders every answer is a result another builder
recorded (cached pass). Printed per size: builds/s of both passes, the
materialisation cache, near cache (blobs and directories, cold pass) and result
cache hit rates from the builders' metrics,
and S3 requests per build by method and store prefix, counted at the S3
server.

Every builder and the S3 server run on this one machine: with its two cores
(or however many it has, printed), more builders add no CPU, so the figures
show the per-build cost of sharing a store and the overhead of more
processes, not the capacity a fleet of machines gains. Needs root (the
sandbox) and busybox.

    .venv/bin/python tests/benchmarks/bench_fleet.py [--builds N] [--callers C] [--jobs J]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from tests.fleet.fleet import (
    Builder,
    CountingS3,
    Counts,
    build_request,
    make_input,
    upload_input,
)

SCRIPT = 'cat "$input/file-003" "$input/file-007" > "$out"'
INPUT_FILES = 20
SIZES = (1, 2, 3)


def run_all(calls: list[Callable[[], None]], callers: int) -> float:
    """Run ``calls`` on ``callers`` threads; the seconds until the last one ended."""
    pending = iter(calls)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def caller() -> None:
        while True:
            with lock:
                call = next(pending, None)
            if call is None:
                return
            try:
                call()
            except BaseException as error:
                errors.append(error)
                return

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.monotonic() - start


def build_call(stub: Any, request: Any) -> Callable[[], None]:
    def call() -> None:
        response = stub.DoBuild(request, timeout=120)
        (output,) = response.outputs
        assert output.output.file.size > 0, response

    return call


def summed(builders: list[Builder], name: str) -> float:
    return sum(b.metrics().get(name, 0.0) for b in builders)


def rate(hits: float, misses: float) -> str:
    total = hits + misses
    return f"{hits / total:6.1%} of {int(total)}" if total else "n/a"


NearCounts = dict[str, tuple[float, float]]


def near_counts(builders: list[Builder]) -> NearCounts:
    """Hits and misses of the builders' near caches, by cache."""
    return {
        cache: (
            summed(builders, f'builder_near_cache_hits_total{{cache="{cache}"}}'),
            summed(builders, f'builder_near_cache_misses_total{{cache="{cache}"}}'),
        )
        for cache in ("blobs", "directories")
    }


def near_rates(before: NearCounts, after: NearCounts) -> str:
    return ", ".join(
        f"{cache} {rate(after[cache][0] - before[cache][0], after[cache][1] - before[cache][1])}"
        for cache in after
    )


def per_build(counts: Counts, builds: int) -> str:
    """S3 requests per build, by method and prefix, busiest first."""
    busiest = sorted(counts.items(), key=lambda item: -item[1])
    return ", ".join(f"{m} {k} {n / builds:.2f}" for (m, k), n in busiest if n) or "none"


def measure(
    size: int, s3: CountingS3, tree: Path, root: Path, builds: int, callers: int, jobs: int
) -> dict[str, Any]:
    bucket = s3.new_bucket()
    fleet = [
        Builder(root / f"size-{size}" / f"builder-{i}", s3, bucket, "--jobs", str(jobs))
        for i in range(size)
    ]
    try:
        entry = upload_input(fleet[0], tree)
        stubs = [snix_rpc.BuildServiceStub(b.channel) for b in fleet]
        requests = [build_request(entry, f"{size}-{i}", SCRIPT) for i in range(builds)]
        before = s3.counts()
        near_before = near_counts(fleet)
        cold = run_all([build_call(stubs[i % size], r) for i, r in enumerate(requests)], callers)
        after_cold = s3.counts()
        near_cold = near_rates(near_before, near_counts(fleet))
        cold_cache = (
            summed(fleet, "builder_materialisation_cache_hits_total"),
            summed(fleet, "builder_materialisation_cache_misses_total"),
        )
        results_before = (
            summed(fleet, "builder_result_cache_hits_total"),
            summed(fleet, "builder_result_cache_misses_total"),
        )
        cached = run_all(
            [build_call(stubs[(i + 1) % size], r) for i, r in enumerate(requests)], callers
        )
        after_cached = s3.counts()
        results = (
            summed(fleet, "builder_result_cache_hits_total") - results_before[0],
            summed(fleet, "builder_result_cache_misses_total") - results_before[1],
        )
        per_builder = [int(b.metrics()["builder_builds_started_total"]) for b in fleet]
    finally:
        for builder in fleet:
            builder.stop()
    return {
        "cold": builds / cold,
        "cached": builds / cached,
        "matcache": rate(*cold_cache),
        "near": near_cold,
        "results": rate(*results),
        "s3_cold": per_build(after_cold - before, builds),
        "s3_cached": per_build(after_cached - after_cold, builds),
        "per_builder": per_builder,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=60, help="builds per pass (default: 60)")
    parser.add_argument(
        "--callers", type=int, default=6, help="concurrent client calls (default: 6)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of each builder (default: 2)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_fleet needs root: builds run in the sandbox")
    print(f"{os.cpu_count()} CPUs on this machine; builders, S3 server and client share them")
    print(
        f"{args.builds} distinct builds per pass, {args.callers} concurrent calls, "
        f"--jobs {args.jobs} per builder"
    )
    s3 = CountingS3()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            tree = make_input(Path(tmp) / "input", INPUT_FILES)
            for size in SIZES:
                figures = measure(size, s3, tree, Path(tmp), args.builds, args.callers, args.jobs)
                print(f"\n{size} builder(s)")
                print(f"  cold pass:   {figures['cold']:7.2f} builds/s")
                print(
                    f"  cached pass: {figures['cached']:7.2f} builds/s (sent to the next builder)"
                )
                print(f"  builds started per builder: {figures['per_builder']}")
                print(f"  materialisation cache hits, cold pass: {figures['matcache']}")
                print(f"  near cache hits, cold pass:            {figures['near']}")
                print(f"  result cache hits, cached pass:        {figures['results']}")
                print(f"  S3 requests per build, cold:   {figures['s3_cold']}")
                print(f"  S3 requests per build, cached: {figures['s3_cached']}")
    finally:
        s3.close()


if __name__ == "__main__":
    main()

"""One serve-protocol connection per derivation, as Nix opens them, against ``nix-store --serve``.

``bench_nix_offload.py`` times Nix's whole offload, whose wall time is
mostly made of Nix's own scheduler: a derivation it finds no free slot for
waits ``build-poll-interval`` (5 s), so a few milliseconds more or less per
connection can decide between no wait and several. This benchmark takes
Nix's scheduler out and times what the remote side does: one client (the
test suite's, speaking the protocol as Nix 2.8 does) opens a connection per
derivation and goes through what Nix's build hook sends: the handshake,
QueryValidPaths for the input, BuildDerivation of a small busybox build,
QueryPathInfos and DumpStorePath of the output, and the close. Each phase's
median is printed for ``builder-nix-serve`` relaying to a running
``builder serve`` (hand-off) and for ``nix-store --serve --write`` on a store
of its own, the two taking turns; then the wall time of the same
connections made two at a time, as a machine with two slots receives them.

With ``--idle S`` each timed connection follows S seconds of quiet, as the
first connections of one of Nix's rounds do.

Run: ``.venv/bin/python tests/benchmarks/bench_nix_serve_connection.py [--connections N]
[--idle S]``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.nix.nix_store import nix_environment
from tests.nixserve.serve_client import (
    PROGRAM,
    ServeClient,
    add_busybox,
    settings,
    shell_derivation,
)
from tests.test_cli_build_remote import serving

PHASES = ("handshake", "query valid", "build", "output copy", "close", "total")
# The corpus's preamble: busybox installs its applets, then the output is written.
SCRIPT = (
    "set -e; {bb}/busybox mkdir -p /build/bin; {bb}/busybox --install -s /build/bin; "
    "export PATH=/build/bin; mkdir -p $out/bin; printf x > $out/bin/hello; "
    "chmod +x $out/bin/hello"
)

Connect = Callable[[], ServeClient]


def connection(connect: Connect, busybox: str) -> list[float]:
    """Seconds spent in each phase of one connection, and in all of them."""
    marks = [time.perf_counter()]
    client = connect()
    client.handshake()
    marks.append(time.perf_counter())
    if client.query_valid([busybox]) != [busybox]:
        raise SystemExit("the input is not valid on the remote side")
    marks.append(time.perf_counter())
    drv_path, out, drv = shell_derivation(busybox, SCRIPT.format(bb=busybox))
    result = client.build_derivation(drv_path, drv, settings())
    if result.status != 0:
        raise SystemExit(f"build failed: {result.message}")
    marks.append(time.perf_counter())
    (info,) = client.query_path_infos([out])
    client.dump(out, info.nar_size)
    marks.append(time.perf_counter())
    status, log = client.finish()
    if status != 0:
        raise SystemExit(f"the remote program ended with {status}: {log}")
    marks.append(time.perf_counter())
    phases = [after - before for before, after in itertools.pairwise(marks)]
    return [*phases, marks[-1] - marks[0]]


def prepared(connect: Connect) -> str:
    """Store busybox on the remote side once, as Nix's first connection would."""
    client = connect()
    client.handshake()
    busybox = add_busybox(client)
    client.finish()
    return busybox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="seconds of quiet before each timed connection, as Nix's rounds leave the machine",
    )
    options = parser.parse_args()
    env = nix_environment()
    with tempfile.TemporaryDirectory() as name:
        work = Path(name)
        listen = f"grpc+unix://{work}/builder.sock"
        with serving(work, listen, "--nix-handoff", str(work / "handoff.sock")):
            stores = {
                "builder-nix-serve, hand-off": (
                    str(PROGRAM),
                    f"handoff+unix://{work}/handoff.sock",
                ),
                "nix-store --serve": ("nix-store", str(work / "store")),
            }
            connects: dict[str, Connect] = {
                peer: (lambda p=program, s=store: ServeClient(s, program=p, env=env))
                for peer, (program, store) in stores.items()
            }
            inputs = {peer: prepared(connect) for peer, connect in connects.items()}
            for peer, connect in connects.items():  # untimed warm-up
                connection(connect, inputs[peer])
            phases: dict[str, list[list[float]]] = {peer: [] for peer in connects}
            for _ in range(options.connections):
                for peer, connect in connects.items():
                    time.sleep(options.idle)
                    phases[peer].append(connection(connect, inputs[peer]))
            paired: dict[str, float] = {}
            for peer, connect in connects.items():
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=2) as pool:
                    list(
                        pool.map(
                            lambda _, c=connect, b=inputs[peer]: connection(c, b),
                            range(options.connections),
                        )
                    )
                paired[peer] = time.perf_counter() - started
    report(phases, paired, options.connections)


def report(phases: dict[str, list[list[float]]], paired: dict[str, float], count: int) -> None:
    peer = "nix-store --serve"
    print(f"one connection per derivation, medians of {count} (ms):")
    print(f"  {'':30}" + "".join(f"{name:>13}" for name in PHASES))
    medians = {
        who: [statistics.median(column) * 1000 for column in zip(*rows, strict=True)]
        for who, rows in phases.items()
    }
    for who, values in medians.items():
        print(f"  {who:30}" + "".join(f"{value:13.1f}" for value in values))
    ours = next(who for who in medians if who != peer)
    print(f"  total ratio to nix-store: {medians[ours][-1] / medians[peer][-1]:.2f}")
    print(f"two at a time, {count} connections:")
    for who, seconds in paired.items():
        print(f"  {who:30} {seconds:6.2f} s   ratio to nix-store {seconds / paired[peer]:.2f}")


if __name__ == "__main__":
    main()

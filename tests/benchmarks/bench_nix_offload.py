"""Nix offloading the corpus to builder-nix-serve, against Nix's own nix-store --serve as the peer.

``nix-build --max-jobs 0`` sends every deterministic derivation of the corpus
to one remote machine (two slots unless ``--jobs``): ``builder-nix-serve`` on
an embedded data directory, ``builder-nix-serve`` forwarding to a running
``builder serve`` over gRPC, ``builder-nix-serve`` relaying its connection to
the hand-off socket of a ``builder serve`` started once for the whole
benchmark (as a busy builder runs one), and ``nix-store --serve --write`` on a
store directory of its own, twice: as Nix comes, building in ``$TMPDIR`` on the
disk, and with ``TMPDIR`` on a tmpfs (``/dev/shm``). Our builds keep their
build directory in memory, so the second peer makes the same trade and shows
how much of a ratio is that choice. Each run gets fresh salts and, but for the
hand-off server, fresh remote stores (a per-run server is started before its
run, not timed); the peers take turns after an untimed round, and the medians
are printed with their ratios to the peer.

Then start-up: from exec of the remote program to its answer to the client's
handshake (magic and version written, 16 bytes read), which every offloaded
derivation pays once, as Nix opens one connection per build. How long a
connection lasts matters more than it seems: a derivation Nix finds no free
slot for waits build-poll-interval (5 s) before Nix tries again, and all the
waiting ones are retried together. In such a round the first two get the
slots; the next one asks tens of milliseconds later (the time Nix takes to
start its next build hook) and gets a slot only if a connection of the round
has ended by then, otherwise it and the rest wait another 5 s. So a run takes
a whole number of rounds, and each run is printed beside the medians.

Run: ``.venv/bin/python tests/benchmarks/bench_nix_offload.py [--runs N] [--starts N]
[--jobs N] [--poll-interval S]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.nix.corpus import FAILING, FILES, busybox_dir, instantiate
from tests.nixserve.offload import SERVE_PROGRAM, Machine, offload, offload_environment
from tests.test_cli_build_remote import serving

CLIENT_MAGIC = 0x390C9DEB
SERVER_MAGIC = 0x5452EECB
CLIENT_VERSION = 0x207


# Where the second Nix peer builds: a tmpfs on every Linux machine.
MEMORY_DIR = Path("/dev/shm")

# A remote store for one run: its --store and the variables nix-build passes on.
Remote = tuple[str, dict[str, str]]


@contextmanager
def embedded(work: Path) -> Iterator[Remote]:
    yield str(work / "data"), {}


@contextmanager
def through_server(work: Path) -> Iterator[Remote]:
    # The corpus has fixed-output derivations, which a server builds only if allowed the network.
    with serving(work, f"grpc+unix://{work}/builder.sock", "--allow-network") as server:
        yield server.address, {}


@contextmanager
def nix_peer(work: Path) -> Iterator[Remote]:
    yield str(work / "store"), {}


@contextmanager
def nix_peer_in_memory(work: Path) -> Iterator[Remote]:
    # Nix makes each build directory in $TMPDIR, which the remote nix-store inherits.
    if not MEMORY_DIR.is_dir():
        raise SystemExit(f"{MEMORY_DIR} is missing: the second Nix peer builds there")
    with tempfile.TemporaryDirectory(dir=MEMORY_DIR) as build_dirs:
        yield str(work / "store"), {"TMPDIR": build_dirs}


class HandoffServer:
    """One ``builder serve --nix-handoff`` for the whole benchmark; each run relays to it."""

    address = ""

    @classmethod
    @contextmanager
    def running(cls, work: Path) -> Iterator[str]:
        socket = work / "handoff.sock"
        listen = f"grpc+unix://{work}/builder.sock"
        with serving(work, listen, "--allow-network", "--nix-handoff", str(socket)):
            cls.address = f"handoff+unix://{socket}"
            yield cls.address

    @classmethod
    @contextmanager
    def store(cls, work: Path) -> Iterator[Remote]:
        yield cls.address, {}


NIX_PEER = "nix-store --serve"
NIX_PEER_IN_MEMORY = "nix-store --serve, TMPDIR tmpfs"

# Each peer: the remote program, and the remote store it gets for a run in a fresh directory.
PEERS: dict[str, tuple[str, Callable[[Path], AbstractContextManager[Remote]]]] = {
    "builder-nix-serve, embedded": (str(SERVE_PROGRAM), embedded),
    "builder-nix-serve, builder serve": (str(SERVE_PROGRAM), through_server),
    "builder-nix-serve, hand-off": (str(SERVE_PROGRAM), HandoffServer.store),
    NIX_PEER: ("nix-store", nix_peer),
    NIX_PEER_IN_MEMORY: ("nix-store", nix_peer_in_memory),
}


def offload_corpus(
    scratch: Path, busybox: Path, name: str, jobs: int, poll_interval: int | None
) -> float:
    program, remote_store = PEERS[name]
    options = []
    if poll_interval is not None:
        options = ["--option", "build-poll-interval", str(poll_interval)]
    names = [file for file in FILES if file not in FAILING]
    drvs = list(instantiate(names, busybox).values())
    work = Path(tempfile.mkdtemp(dir=scratch))
    with remote_store(work) as (store, environment):
        start = time.perf_counter()
        done = offload(drvs, [Machine(program, store, jobs)], *options, environment=environment)
        elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"offloading to {name} failed:\n{done.stderr}")
    return elapsed


def handshake_seconds(argv: list[str]) -> float:
    """Exec to the server's handshake answer; the client then hangs up as Nix would."""
    start = time.perf_counter()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=offload_environment(),
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(struct.pack("<QQ", CLIENT_MAGIC, CLIENT_VERSION))
    process.stdin.flush()
    answer = process.stdout.read(16)
    elapsed = time.perf_counter() - start
    process.stdin.close()
    process.wait()
    if len(answer) != 16 or struct.unpack("<Q", answer[:8])[0] != SERVER_MAGIC:
        raise SystemExit(f"{argv[0]} answered the handshake with {answer!r}")
    return elapsed


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2, help="the remote machine's build slots")
    parser.add_argument(
        "--poll-interval",
        type=int,
        default=None,
        help="Nix's build-poll-interval in seconds for every peer (default: Nix's own, 5)",
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        handoff = (scratch / "handoff").resolve()
        handoff.mkdir()
        with HandoffServer.running(handoff):
            times, start_times = measure(scratch, options)
    report(times, start_times, options)


def measure(
    scratch: Path, options: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Offload times per peer, then start-up times per program, interleaved."""
    busybox = busybox_dir(scratch)
    times: dict[str, list[float]] = {peer: [] for peer in PEERS}
    for peer in PEERS:  # untimed: warms caches and the local Nix store
        offload_corpus(scratch, busybox, peer, options.jobs, options.poll_interval)
    for _ in range(options.runs):
        for peer in PEERS:
            seconds = offload_corpus(scratch, busybox, peer, options.jobs, options.poll_interval)
            times[peer].append(seconds)
    serve = ["--serve", "--write", "--store"]
    starts = {
        "builder-nix-serve": [str(SERVE_PROGRAM), *serve, str(scratch / "data")],
        "builder-nix-serve, hand-off": [str(SERVE_PROGRAM), *serve, HandoffServer.address],
        "nix-store --serve": ["nix-store", *serve, str(scratch / "store")],
    }
    start_times: dict[str, list[float]] = {program: [] for program in starts}
    for argv in starts.values():
        handshake_seconds(argv)  # creates the store, untimed
    for _ in range(options.starts):
        for program, argv in starts.items():
            start_times[program].append(handshake_seconds(argv))
    return times, start_times


def report(
    times: dict[str, list[float]], start_times: dict[str, list[float]], options: argparse.Namespace
) -> None:
    count = len(FILES) - len(FAILING)
    peer = statistics.median(times[NIX_PEER])
    peer_in_memory = statistics.median(times[NIX_PEER_IN_MEMORY])
    poll = "Nix's default" if options.poll_interval is None else f"{options.poll_interval} s"
    print(
        f"nix offload of the corpus ({count} top-level derivations, {options.jobs} remote jobs, "
        f"{os.cpu_count()} cores, build-poll-interval {poll}, median of {options.runs} runs):"
    )
    print(f"  {'':34} {'median':>8}   ratio to nix-store, to nix-store with TMPDIR tmpfs")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:34} {median:6.2f} s   {median / peer:4.2f}  {median / peer_in_memory:4.2f}")
    # Nix's rounds make single runs differ by multiples of the poll interval;
    # the runs themselves show how much of a median is that.
    print("each run, in the order measured (s):")
    for name, samples in times.items():
        print(f"  {name:34} " + " ".join(f"{seconds:6.2f}" for seconds in samples))
    print(f"start-up to handshake answer (median / p90 of {options.starts} starts):")
    for program, samples in start_times.items():
        print(
            f"  {program:34} {statistics.median(samples) * 1000:6.1f} ms / "
            f"{p90(samples) * 1000:6.1f} ms"
        )


if __name__ == "__main__":
    main()

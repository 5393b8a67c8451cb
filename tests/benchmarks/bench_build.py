"""A trivial build end to end, against Nix and bubblewrap doing the same work.

What a client of the build protocol waits for is the whole round trip: gRPC
over a unix socket, request validation, the input taken from the
materialisation cache, the sandbox, and the output stored. So ``builder serve``
runs as its own process, the client is the bare generated Snix stub, and the
figures are compared with what the same command costs as a sandboxed
``nix-store --realise`` and under a bare ``bwrap``:

1. latency (p50/p90) of a trivial DoBuild with its input already warm, the
   three contenders interleaved run by run so background load hits them alike;
   the result cache is off and every request differs anyway, and the latency
   of a result-cache hit is printed as an extra line;
2. builds per second with 8 concurrent clients, against 8 concurrent
   ``nix-store --realise`` processes;
3. how long a running build outlives its client cancelling the call (the
   suite checks only that it ends, with a margin for loaded machines).

With ``--baseline REV`` a second server runs the code of an earlier commit
(exported with ``git archive``) and joins the interleaved latency runs, so the
cost of a change to the server shows as a ratio measured under the same load.

Cold and warm materialisation are measured by bench_matcache.py. Needs root
(for Nix without a daemon), bwrap, nix-bin and busybox.

    .venv/bin/python tests/benchmarks/bench_build.py [--runs N] [--seconds S] [--baseline REV]
"""

from __future__ import annotations

import argparse
import itertools
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# Measure the checkout this script lives in, whatever is installed in the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from builder.castore.blobs.grpc import GrpcBlobService
from builder.castore.directories.grpc import GrpcDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.wire import Family, node_to_proto
from builder.executor.config import default_systems
from builder.proto.snix.build.protos import build_pb2 as snix_build
from builder.proto.snix.build.protos import rpc_build_pb2_grpc as snix_rpc
from tests.benchmarks.nix_peer import instantiate, nix_env
from tests.isolation import sleep_marker
from tests.processes import processes_with
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
WARMUP = 5
CLIENTS = 8
CANCEL_RUNS = 10
SCRIPT = 'echo x > "$out"'
NIX_SCRIPT = "echo x > $out"
INPUT_NAME = "0" * 32 + "-bench-input"
OUTPUT_NAME = "1" * 32 + "-bench-out"


class Server:
    """``builder serve`` in its own process, on a unix socket in ``root``.

    ``tree`` is the source tree whose code runs: this checkout, or an exported
    earlier commit for ``--baseline``.
    """

    def __init__(self, root: Path, *options: str, tree: Path = REPO) -> None:
        root.mkdir()
        self.url = f"grpc+unix://{root / 'builder.sock'}"
        self._log = root / "server.log"
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "builder",
                    "serve",
                    "--listen",
                    self.url,
                    "--data-dir",
                    str(root / "data"),
                    *options,
                ],
                cwd=tree,
                stdout=log,
                stderr=log,
            )
        self.channel = grpc.insecure_channel(f"unix:{root / 'builder.sock'}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self._log.read_text()}")
            try:
                grpc.channel_ready_future(self.channel).result(timeout=0.2)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {timeout} s") from None

    def stop(self) -> None:
        """SIGTERM lets the server stop its launcher; SIGKILL only if it hangs."""
        self.channel.close()
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@contextmanager
def served(root: Path, *options: str, tree: Path = REPO) -> Iterator[Server]:
    server = Server(root, *options, tree=tree)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def export_commit(revision: str, dest: Path) -> Path:
    """The source tree of ``revision``, unpacked beside the run's other files."""
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def ingest_input(server: Server, source: Path) -> Any:
    """Store the input through the server's own castore services, as a client would."""
    blobs = GrpcBlobService(server.url, Family.SNIX)
    directories = GrpcDirectoryService(server.url, Family.SNIX)
    try:
        node = ingest_path(source, blobs, directories, INPUT_NAME.encode())
    finally:
        blobs.close()
        directories.close()
    return node_to_proto(node, Family.SNIX)


def build_request(input_entry: Any, iteration: str, script: str = SCRIPT) -> Any:
    """The trivial build in Nix's layout; ``iteration`` makes each request distinct."""
    message = snix_build.BuildRequest
    env = {
        "BENCH_ITERATION": iteration,
        "PATH": "/path-not-set",
        "out": f"/nix/store/{OUTPUT_NAME}",
    }
    return message(
        inputs=[input_entry],
        command_args=["/bin/sh", "-c", script],
        working_dir="build",
        scratch_paths=["build", "nix/store"],
        inputs_dir="nix/store",
        outputs=[f"nix/store/{OUTPUT_NAME}"],
        environment_vars=[
            message.EnvVar(key=key, value=value.encode()) for key, value in sorted(env.items())
        ],
        constraints=message.BuildConstraints(system=default_systems()[0], provide_bin_sh=True),
    )


def do_build(stub: Any, request: Any) -> None:
    response = stub.DoBuild(request, timeout=60)
    (output,) = response.outputs
    assert output.output.file.size == 2, response


class NixRealiser:
    """Realises one fresh derivation per call, remembering what it adds to /nix/store."""

    def __init__(self, drvs: list[str]) -> None:
        self.drvs = drvs
        self._next = iter(drvs)
        self._lock = threading.Lock()
        self._outputs: list[str] = []
        self._env = nix_env()

    def take(self) -> str | None:
        with self._lock:
            return next(self._next, None)

    def realise(self, drv: str) -> None:
        out = subprocess.run(
            ["nix-store", "--realise", drv],
            env=self._env,
            check=True,
            capture_output=True,
            text=True,
        )
        with self._lock:
            self._outputs.extend(out.stdout.split())

    def __call__(self) -> None:
        drv = self.take()
        assert drv is not None, "ran out of derivations"
        self.realise(drv)

    def delete_all(self) -> None:
        """Nothing roots these paths, so deleting them leaves the store as it was."""
        subprocess.run(
            ["nix-store", "--delete", *self._outputs, *self.drvs],
            env=self._env,
            check=True,
            capture_output=True,
        )


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Summary:
    p50: float
    p90: float

    @classmethod
    def of(cls, seconds: list[float]) -> Summary:
        deciles = statistics.quantiles(seconds, n=10, method="inclusive")
        return cls(deciles[4], deciles[8])


def latencies(contenders: dict[str, Callable[[], None]], runs: int) -> dict[str, Summary]:
    """Time each contender once per round, in a rotating order.

    Whoever runs right after a slow contender (Nix) finds caches and the
    scheduler in another state than whoever runs after a fast one; rotating
    the order spreads that over all of them, so two servers running the same
    code come out alike.
    """
    for _ in range(WARMUP):
        for action in contenders.values():
            action()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for run in range(runs):
        shift = run % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(contenders[name]))
    return {name: Summary.of(values) for name, values in times.items()}


def cancel_latency(stub: Any, input_entry: Any, runs: int) -> Summary:
    """From a client cancelling a running DoBuild to the build's processes being gone."""
    seconds = []
    for run in range(runs):
        marker = sleep_marker(3600 + run)
        script = f"{marker}; {SCRIPT}"
        call = stub.DoBuild.future(build_request(input_entry, "cancel", script), timeout=600)
        wait_for(lambda m=marker: processes_with(m), "the build to start")
        start = time.perf_counter()
        call.cancel()
        while processes_with(marker):
            pass
        seconds.append(time.perf_counter() - start)
    return Summary.of(seconds)


def throughput(client: Callable[[], bool], seconds: float) -> tuple[int, float]:
    """Run ``client`` on CLIENTS threads until the deadline; return builds and elapsed time.

    ``client`` returns False when it has nothing left to build.
    """
    done = [0] * CLIENTS
    failures: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        try:
            while time.perf_counter() < deadline and client():
                done[slot] += 1
        except BaseException as error:  # re-raised on the main thread below
            failures.append(error)

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(slot,)) for slot in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return sum(done), elapsed


LABEL_WIDTH = 52


def row(label: str, figure: str) -> None:
    print(f"   {label:<{LABEL_WIDTH}} {figure}")


def latency_figure(summary: Summary) -> str:
    return f"p50 {summary.p50 * 1e3:7.2f} ms   p90 {summary.p90 * 1e3:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per contender")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput test")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also time a server running this earlier commit, interleaved with ours",
    )
    args = parser.parse_args()
    runs, seconds = args.runs, args.seconds

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-build-")))
        source = tmp / "input"
        source.mkdir()
        (source / "msg").write_text("a small input, materialised once and reused\n")
        uncached = stack.enter_context(served(tmp / "uncached", "--no-result-cache"))
        cached = stack.enter_context(served(tmp / "cached"))
        uncached_input = ingest_input(uncached, source)
        cached_input = ingest_input(cached, source)
        uncached_stub = snix_rpc.BuildServiceStub(uncached.channel)
        cached_stub = snix_rpc.BuildServiceStub(cached.channel)
        contenders: dict[str, Callable[[], None]] = {}
        if args.baseline:
            tree = export_commit(args.baseline, tmp / "baseline-tree")
            baseline = stack.enter_context(served(tmp / "baseline", "--no-result-cache", tree=tree))
            baseline_input = ingest_input(baseline, source)
            baseline_stub = snix_rpc.BuildServiceStub(baseline.channel)

        nix_workdir = tmp / "nix"
        nix_workdir.mkdir()
        # Enough derivations for a throughput several times what Nix reaches here.
        count = WARMUP + runs + int(seconds * 60)
        nix = NixRealiser(instantiate(nix_workdir, count, "bench-build", NIX_SCRIPT))
        # The Nix store outlives the run, so every path added is deleted again.
        stack.callback(nix.delete_all)

        counter = itertools.count()

        def ours() -> None:
            do_build(uncached_stub, build_request(uncached_input, str(next(counter))))

        contenders["ours"] = ours
        if args.baseline:

            def earlier() -> None:
                do_build(baseline_stub, build_request(baseline_input, str(next(counter))))

            contenders["baseline"] = earlier

        def ours_cache_on() -> None:
            do_build(cached_stub, build_request(cached_input, str(next(counter))))

        hit_request = build_request(cached_input, "always the same")

        def ours_cache_hit() -> None:
            do_build(cached_stub, hit_request)

        bwrap = ["bwrap", "--unshare-all", "--ro-bind", str(nix_workdir / "bb"), "/bin"]
        bwrap += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        bwrap += ["--setenv", "out", "/tmp/out", "/bin/busybox", "sh", "-c", SCRIPT]

        def bubblewrap() -> None:
            subprocess.run(bwrap, check=True)

        contenders |= {
            "nix": nix,
            "bwrap": bubblewrap,
            "cache on": ours_cache_on,
            "cache hit": ours_cache_hit,
        }
        figures = latencies(contenders, runs)

        def ours_client() -> bool:
            ours()
            return True

        def nix_client() -> bool:
            drv = nix.take()
            if drv is None:
                return False
            nix.realise(drv)
            return True

        ours_builds, ours_elapsed = throughput(ours_client, seconds)
        nix_builds, nix_elapsed = throughput(nix_client, seconds)
        cancelled = cancel_latency(uncached_stub, uncached_input, CANCEL_RUNS)

    ours_p50, nix_p50, bwrap_p50 = (figures[n].p50 for n in ("ours", "nix", "bwrap"))
    print(f"1. Trivial build, warm input: {runs} timed runs each after {WARMUP} warm-up")
    row("ours: DoBuild, unix socket, --no-result-cache", latency_figure(figures["ours"]))
    row("peer: nix-store --realise, sandbox = true", latency_figure(figures["nix"]))
    row("peer: bwrap --unshare-all, same command", latency_figure(figures["bwrap"]))
    row("ours / nix (p50)", f"{ours_p50 / nix_p50:.2f} (goal < 0.33)")
    row("ours / bwrap (p50)", f"{ours_p50 / bwrap_p50:.2f}")
    if args.baseline:
        row(f"baseline: DoBuild at {args.baseline}", latency_figure(figures["baseline"]))
        row("ours / baseline (p50)", f"{ours_p50 / figures['baseline'].p50:.2f}")
    row("extra: ours, result cache on, every request new", latency_figure(figures["cache on"]))
    row("extra: ours, result cache hit", latency_figure(figures["cache hit"]))

    ours_rate, nix_rate = ours_builds / ours_elapsed, nix_builds / nix_elapsed
    print(f"2. Throughput: {CLIENTS} concurrent clients, {seconds:g} s each, result cache off")
    row(f"ours: {CLIENTS} threads sharing one channel", f"{ours_rate:6.1f} builds/s")
    row(f"peer: {CLIENTS} concurrent nix-store --realise loops", f"{nix_rate:6.1f} builds/s")
    row("ours / nix", f"{ours_rate / nix_rate:.2f}")
    row("extra: nix sequential, 1 / p50 of 1.", f"{1 / nix_p50:6.1f} builds/s")
    print(f"3. Cancellation: a client cancels a running DoBuild, {CANCEL_RUNS} runs")
    row("ours: until the build's processes are gone", latency_figure(cancelled))
    row("goal", "p90 < 1000 ms")
    print("4. Cold and warm materialisation: see tests/benchmarks/bench_matcache.py")


if __name__ == "__main__":
    main()

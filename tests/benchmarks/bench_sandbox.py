"""Per-run overhead of the sandbox against bubblewrap and Nix's own sandbox.

Runs ``/bin/true`` (the host's static busybox) through a started launcher,
through ``bwrap --unshare-all``, and as a trivial derivation realised by
``nix-store --realise`` with Nix's sandbox on. The three are interleaved run by
run so that background load hits them alike; the median of each is printed
with the ratios. After every timed run the script pauses briefly (untimed), so
that work a contender leaves in the background (our launcher clones the next
spare PID 1 once a run has finished) never overlaps another contender's timing.
Needs root (for Nix without a daemon), bwrap and nix-bin.

    .venv/bin/python tests/benchmarks/bench_sandbox.py [--runs N]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sandbox import Bind, Launcher, SandboxSpec
from tests.benchmarks.nix_peer import BUSYBOX, instantiate, nix_env

SETTLE = 0.05


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    time.sleep(SETTLE)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    runs = args.runs
    spec = SandboxSpec(argv=["/bin/true"], ro_binds=[Bind(BUSYBOX, "/bin/true")])
    bwrap = [
        "bwrap",
        "--unshare-all",
        "--ro-bind",
        BUSYBOX,
        "/bin/true",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "/bin/true",
    ]
    with tempfile.TemporaryDirectory() as tmp, Launcher() as launcher:
        drvs = instantiate(Path(tmp), runs + 2, "bench-true", "echo > $out")
        env = nix_env()

        def ours() -> None:
            result = launcher.run(spec)
            assert result.ok, result

        def bubblewrap() -> None:
            subprocess.run(bwrap, check=True)

        def nix(drv: str) -> None:
            subprocess.run(
                ["nix-store", "--realise", drv], env=env, check=True, capture_output=True
            )

        for _ in range(3):
            ours()
            bubblewrap()
        nix(drvs[0])
        nix(drvs[1])
        times: dict[str, list[float]] = {"sandbox": [], "bwrap": [], "nix": []}
        for drv in drvs[2:]:
            times["sandbox"].append(timed(ours))
            times["bwrap"].append(timed(bubblewrap))
            times["nix"].append(timed(lambda drv=drv: nix(drv)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"runs per contender: {runs}")
    for name, value in medians.items():
        print(f"{name:>8}: median {value * 1000:8.2f} ms")
    ratio = medians["sandbox"] / medians["bwrap"]
    print(f"sandbox / bwrap: {ratio:.2f}x (goal <= 1.5x)")
    print(f"sandbox / nix:   {medians['sandbox'] / medians['nix']:.2f}x")


if __name__ == "__main__":
    main()

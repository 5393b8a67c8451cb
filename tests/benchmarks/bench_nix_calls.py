"""One ``builder nix build`` call per corpus derivation against one ``nix-build`` call each.

This is what a user (or a script driving Nix) feels: a fresh process per
derivation, so start-up, imports and the store open count as much as the
build. Both builders get the same freshly salted derivations and build them
one call at a time in the same order, taking turns, each with its own store
that fills as the calls go, so a later call finds what an earlier one built. A third
column times ``builder nix build`` of a derivation whose outputs are already
known: the cost of a call that has nothing to build. Failing derivations are
left out. Python's compiled bytecode is kept for the run (in a cache of its
own, warmed by one untimed build), as it is for an installed program, even
where the environment turns off writing it.
Run: ``.venv/bin/python tests/benchmarks/bench_nix_calls.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.nix.corpus import FAILING, FILES, NIX_ENV, busybox_dir, instantiate

ROOT = Path(__file__).resolve().parents[2]

JOBS = 2


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return elapsed


def _ours(drv: str, data: Path) -> list[str]:
    return [
        sys.executable, "-m", "builder", "nix", "build", drv,
        "--data-dir", str(data), "--jobs", str(JOBS),
    ]  # fmt: skip


def _round(
    names: list[str], work: Path, env: dict[str, str]
) -> tuple[list[float], list[float], list[float]]:
    drvs = list(instantiate(names, busybox_dir(work)).values())
    _timed(_ours(drvs[0], work / "warm-up"), env)
    data = work / "data"
    nix_build = ["nix-build", "--no-out-link", "-j", str(JOBS)]
    ours, theirs = [], []
    # Each derivation by both in turn, so that a change in the host's load
    # falls on both sides alike.
    for drv in drvs:
        ours.append(_timed(_ours(drv, data), env))
        theirs.append(_timed([*nix_build, drv], env))
    known = [_timed(_ours(drv, data), env) for drv in drvs]
    return ours, known, theirs


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    names = [name for name in FILES if name not in FAILING]
    ours: list[float] = []
    known: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as bytecode:
        env = {**NIX_ENV, "PYTHONPYCACHEPREFIX": bytecode}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as scratch:
                a, b, c = _round(names, Path(scratch), env)
                ours += a
                known += b
                theirs += c
    mine, nix = statistics.median(ours), statistics.median(theirs)
    print(
        f"nix calls ({len(names)} derivations x {rounds} rounds, one call each, "
        f"{os.cpu_count()} cores): builder median {mine * 1000:.0f} ms, "
        f"nix-build median {nix * 1000:.0f} ms, ratio {mine / nix:.2f}; "
        f"builder with nothing to build median {statistics.median(known) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()

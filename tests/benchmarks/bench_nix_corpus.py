"""Wall time of building the whole Nix corpus: our builder against nix-build, in one run.

Both builders get the same freshly salted derivations, so neither finds an
output in a store: ours builds first, without importing anything into Nix,
then ``nix-store --realise`` builds the same .drv files. Failing derivations
are left out. Each round salts afresh; the figures are medians over rounds.
Run: ``.venv/bin/python tests/benchmarks/bench_nix_corpus.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.nix.corpus import (
    FAILING,
    FILES,
    busybox_dir,
    instantiate,
    nix_realise,
    our_builder,
)

JOBS = 2


def _round(names: list[str]) -> tuple[float, float]:
    """Our wall time and nix-build's for the corpus, salted afresh."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        drvs = list(instantiate(names, busybox_dir(work)).values())
        with our_builder(work / "ours", jobs=JOBS, result_cache=False) as built:
            start = time.perf_counter()
            # Top-level derivations in parallel too, as nix-store --realise takes them;
            # the build service's job slots bound what actually runs at once.
            with ThreadPoolExecutor(max_workers=len(drvs)) as pool:
                list(pool.map(built.session.build, drvs))
            ours = time.perf_counter() - start
        start = time.perf_counter()
        done = nix_realise(drvs, jobs=JOBS)
        theirs = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"nix-store --realise failed:\n{done.stderr}")
    return ours, theirs


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    names = [name for name in FILES if name not in FAILING]
    timed = [_round(names) for _ in range(rounds)]
    ours = statistics.median(t[0] for t in timed)
    theirs = statistics.median(t[1] for t in timed)
    ratio = statistics.median(t[0] / t[1] for t in timed)
    print(
        f"nix corpus ({len(names)} top-level derivations, {JOBS} jobs, {os.cpu_count()} cores, "
        f"{rounds} rounds): builder {ours:.2f} s, nix-build {theirs:.2f} s, "
        f"median ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    main()

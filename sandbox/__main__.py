"""``python -m sandbox SPEC.json``: run one spec and print its result as JSON.

Meant for debugging a spec by hand; the log is also copied to stderr as it
arrives so a hanging build shows where it hangs.
"""

import argparse
import json
import sys
from pathlib import Path

from sandbox.launcher import Launcher, LauncherConfig
from sandbox.spec import SandboxSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("spec", type=Path, help="spec as JSON (see sandbox.spec)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the log to stderr")
    args = parser.parse_args(argv)
    spec = SandboxSpec.from_json(args.spec.read_bytes())

    def echo(chunk: bytes) -> None:
        if not args.quiet:
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()

    with Launcher(LauncherConfig()) as launcher:
        result = launcher.run(spec, on_log=echo)
    raw = result.to_dict()
    raw["log"] = result.log.decode(errors="replace")
    print(json.dumps(raw, indent=2, sort_keys=True))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

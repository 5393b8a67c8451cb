"""The committed netlink request must be exactly what pyroute2 encodes today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_request_matches_pyroute2(tmp_path: Path) -> None:
    fresh = tmp_path / "netlink_requests.py"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_netlink.py"), "--out", str(fresh)],
        check=True,
        capture_output=True,
    )
    committed = (ROOT / "sandbox" / "netlink_requests.py").read_text()
    assert fresh.read_text() == committed, "run scripts/gen_netlink.py: the request is stale"

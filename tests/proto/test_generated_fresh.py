"""The committed generated code must be exactly what the protos produce today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> set[Path]:
    return {
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
    )
    committed = ROOT / "builder" / "proto"
    fresh, current = _files(tmp_path), _files(committed)
    assert fresh == current, "run scripts/gen_protos.py: generated file set differs"
    stale = [
        str(p) for p in sorted(fresh) if not filecmp.cmp(tmp_path / p, committed / p, shallow=False)
    ]
    assert not stale, f"run scripts/gen_protos.py: stale generated files {stale}"


def test_both_families_registered_under_their_packages() -> None:
    from builder.proto.snix.build.protos import rpc_build_pb2 as snix_rpc
    from builder.proto.tvix.build.protos import rpc_build_pb2 as tvix_rpc

    tvix = tvix_rpc.DESCRIPTOR.services_by_name["BuildService"].methods_by_name["DoBuild"]
    snix = snix_rpc.DESCRIPTOR.services_by_name["BuildService"].methods_by_name["DoBuild"]
    assert tvix.output_type.full_name == "tvix.build.v1.Build"
    assert snix.output_type.full_name == "snix.build.v1.BuildResponse"
    assert tvix.input_type.fields_by_name["refscan_needles"].number == 10

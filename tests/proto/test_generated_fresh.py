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


def test_store_protos_of_both_families() -> None:
    from builder.proto.snix.store.protos import pathinfo_pb2 as snix_pathinfo
    from builder.proto.snix.store.protos import rpc_pathinfo_pb2 as snix_rpc
    from builder.proto.tvix.store.protos import pathinfo_pb2 as tvix_pathinfo
    from builder.proto.tvix.store.protos import rpc_pathinfo_pb2 as tvix_rpc

    tvix_root = tvix_pathinfo.PathInfo.DESCRIPTOR.fields_by_number[1]
    snix_root = snix_pathinfo.PathInfo.DESCRIPTOR.fields_by_number[1]
    assert (tvix_root.name, tvix_root.message_type.full_name) == ("node", "tvix.castore.v1.Node")
    assert (snix_root.name, snix_root.message_type.full_name) == ("entry", "snix.castore.v1.Entry")
    narinfo = tvix_pathinfo.NARInfo.DESCRIPTOR
    assert {f.name: f.number for f in narinfo.fields} == {
        "nar_size": 1,
        "nar_sha256": 2,
        "signatures": 3,
        "reference_names": 4,
        "deriver": 5,
        "ca": 6,
    }
    assert tvix_pathinfo.NARInfo.CA.Hash.Value("FLAT_SHA512") == 8
    for rpc, family in ((tvix_rpc, "tvix"), (snix_rpc, "snix")):
        service = rpc.DESCRIPTOR.services_by_name["PathInfoService"]
        assert service.full_name == f"{family}.store.v1.PathInfoService"
        assert set(service.methods_by_name) == {"Get", "Put", "CalculateNAR", "List"}
        assert service.methods_by_name["List"].server_streaming
        request = rpc.GetPathInfoRequest.DESCRIPTOR.fields_by_name["by_output_hash"]
        assert request.number == 1

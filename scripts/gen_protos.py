"""Regenerate the committed protobuf and gRPC Python code from protos/.

protoc writes absolute imports named after the proto paths (``tvix.castore...``);
they are rewritten to live under ``builder.proto`` so that the generated code is
an ordinary subpackage rather than a set of top-level packages on sys.path.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PACKAGE = "builder.proto"
OUT_DIR = ROOT / "builder" / "proto"
TOP_LEVEL = ("tvix", "snix", "builder")

_IMPORT = re.compile(rf"^(from|import) ({'|'.join(TOP_LEVEL)})\.", re.MULTILINE)


def generate(out_dir: Path) -> None:
    """Write generated modules for every .proto under protos/ into out_dir."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        raw_root = Path(raw)
        for src in sorted(raw_root.rglob("*.py*")):
            dest = out_dir / src.relative_to(raw_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE}.{m.group(2)}.", src.read_text())
            dest.write_text(text)
    for directory in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    out = parser.parse_args().out
    if out == OUT_DIR and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    generate(out)
    print(f"generated into {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

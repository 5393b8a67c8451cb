"""The declared minimum versions of protobuf and gRPC against the committed generated code.

Generated modules refuse to load on a runtime older than the one they were
generated for (protobuf's ``ValidateProtobufRuntimeVersion``, gRPC's
``GRPC_GENERATED_VERSION`` check), so a minimum below that lets pip keep an
installation the product cannot even import. Regenerating with newer tools
must therefore raise the minimums with it; this test notices when it did not.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "builder" / "proto"
GRPC_PACKAGES = ("grpcio", "grpcio-health-checking", "grpcio-reflection")
HEADER = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {Requirement(line).name: Requirement(line) for line in declared}


def _minimum(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    assert len(floors) == 1, f"{requirement}: expected one '>=' or '==' bound"
    return floors[0]


def _protobuf_gencode_version(path: Path) -> Version:
    """The version the module checks the runtime against, which its header must repeat."""
    tree = ast.parse(path.read_text(), str(path))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "ValidateProtobufRuntimeVersion"
    ]
    assert len(calls) == 1, f"{path}: no runtime version check found"
    major, minor, patch, suffix = (ast.literal_eval(arg) for arg in calls[0].args[1:5])
    checked = Version(f"{major}.{minor}.{patch}{suffix}")
    header = HEADER.search(path.read_text())
    assert header is not None, f"{path}: no '# Protobuf Python Version:' header"
    assert Version(header.group(1)) == checked, f"{path}: header and check disagree"
    return checked


def _grpc_generated_version(path: Path) -> Version:
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "GRPC_GENERATED_VERSION"
        ):
            return Version(ast.literal_eval(node.value))
    raise AssertionError(f"{path}: no GRPC_GENERATED_VERSION")


def test_the_generated_code_is_found() -> None:
    assert len(list(GENERATED.rglob("*_pb2.py"))) >= 10
    assert len(list(GENERATED.rglob("*_pb2_grpc.py"))) >= 10


def test_protobuf_minimum_admits_no_runtime_the_generated_code_refuses() -> None:
    needed = max(_protobuf_gencode_version(path) for path in GENERATED.rglob("*_pb2.py"))
    declared = _minimum(_requirements()["protobuf"])
    assert declared >= needed, f"protobuf>={declared}, but the generated code needs {needed}"


def test_grpc_minimums_admit_no_runtime_the_generated_code_refuses() -> None:
    needed = max(_grpc_generated_version(path) for path in GENERATED.rglob("*_pb2_grpc.py"))
    requirements = _requirements()
    for name in GRPC_PACKAGES:
        declared = _minimum(requirements[name])
        assert declared >= needed, f"{name}>={declared}, but the generated code needs {needed}"


def test_the_pinned_generator_is_the_one_the_code_was_generated_with() -> None:
    """Regenerating with the test extra's grpcio-tools must reproduce the committed code."""
    versions = {_grpc_generated_version(path) for path in GENERATED.rglob("*_pb2_grpc.py")}
    assert versions == {_minimum(_requirements()["grpcio-tools"])}


def test_minimums_are_read_from_the_specifiers() -> None:
    assert _minimum(Requirement("protobuf>=7.35.1,<8")) == Version("7.35.1")
    assert _minimum(Requirement("grpcio-tools==1.85.1")) == Version("1.85.1")

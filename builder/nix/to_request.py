"""Turning a derivation into a BuildRequest the way Nix's own sandbox would run it.

The environment is assembled in Nix's order, which decides who wins a clash:
``PATH``, ``HOME``, ``NIX_STORE`` and ``NIX_BUILD_CORES`` are defaults the
derivation may override, while the temporary-directory variables, ``PWD``,
``NIX_LOG_FD``, ``TERM`` (and, for fixed outputs, ``NIX_OUTPUT_CHECKED`` and
the impure variables) are set after the derivation's own and win. With
structured attributes the derivation's environment is not passed at all; the
attributes arrive as files instead.

Nix 2.8 points ``NIX_ATTRS_JSON_FILE`` and ``NIX_ATTRS_SH_FILE`` at its
host-side temporary directory, a path that does not exist inside the
sandbox; here they name the files under ``/build``, as later Nix versions do,
so builders that follow the variables find them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from builder.castore.nodes import Node
from builder.errors import FailedPreconditionError
from builder.executor.request import AdditionalFile, BuildRequest, Constraints
from builder.nix.derivation import Derivation
from builder.nix.structured_attrs import attrs_json, attrs_sh
from builder.store import nixbase32
from builder.store.store_path import STORE_DIR, StorePath

BUILD_DIR = "/build"
HOME = "/homeless-shelter"


@dataclass(frozen=True)
class NixRequest:
    """A request together with what is needed to read its answer back as store paths."""

    request: BuildRequest
    needle_paths: tuple[StorePath, ...]
    output_paths: dict[str, StorePath]

    def request_output(self, name: str) -> str:
        return "nix/store/" + self.output_paths[name].basename


def pass_as_file_name(variable: str) -> str:
    return ".attr-" + nixbase32.encode(hashlib.sha256(variable.encode()).digest())


def derivation_to_request(
    drv: Derivation,
    inputs: Sequence[tuple[StorePath, Node]],
    build_cores: int,
    impure_env: Mapping[str, str] | None = None,
) -> NixRequest:
    """``inputs`` is the whole input closure, each node named by its path's basename."""
    if drv.builder.startswith("builtin:"):
        raise FailedPreconditionError(f"builder {drv.builder!r} is built into Nix, not supported")
    env: dict[str, str] = {
        "PATH": "/path-not-set",
        "HOME": HOME,
        "NIX_STORE": STORE_DIR,
        "NIX_BUILD_CORES": str(build_cores),
    }
    files: list[AdditionalFile] = []
    attrs = drv.structured_attrs()
    outputs = {o.name: str(o.path) for o in drv.outputs}
    derivation_env = drv.environment
    if attrs is None:
        passed = set(derivation_env.get("passAsFile", "").split())
        for key, value in drv.env:
            if key in passed:
                name = pass_as_file_name(key)
                files.append(AdditionalFile(f"build/{name}", _bytes(value)))
                env[key + "Path"] = f"{BUILD_DIR}/{name}"
            else:
                env[key] = value
    env.update(
        NIX_BUILD_TOP=BUILD_DIR,
        TMPDIR=BUILD_DIR,
        TEMPDIR=BUILD_DIR,
        TMP=BUILD_DIR,
        TEMP=BUILD_DIR,
        PWD=BUILD_DIR,
    )
    if drv.is_fixed_output:
        env["NIX_OUTPUT_CHECKED"] = "1"
        host = impure_env or {}
        for variable in _impure_variables(drv, attrs):
            env[variable] = host.get(variable, "")
    env.update(NIX_LOG_FD="2", TERM="xterm-256color")
    if attrs is not None:
        files.append(AdditionalFile("build/.attrs.json", attrs_json(attrs, outputs)))
        files.append(AdditionalFile("build/.attrs.sh", attrs_sh(attrs, outputs)))
        env["NIX_ATTRS_JSON_FILE"] = f"{BUILD_DIR}/.attrs.json"
        env["NIX_ATTRS_SH_FILE"] = f"{BUILD_DIR}/.attrs.sh"

    ordered_inputs = sorted(inputs, key=lambda item: item[0].basename)
    needle_paths = tuple(o.path for o in drv.outputs) + tuple(p for p, _ in ordered_inputs)
    request = BuildRequest(
        inputs=tuple(node for _, node in ordered_inputs),
        command_args=(drv.builder, *drv.args),
        working_dir="build",
        scratch_paths=("build", "nix/store"),
        inputs_dir="nix/store",
        outputs=tuple(sorted("nix/store/" + o.path.basename for o in drv.outputs)),
        environment=tuple(sorted((k, _bytes(v)) for k, v in env.items())),
        constraints=Constraints(
            system=drv.system, network_access=drv.is_fixed_output, provide_bin_sh=False
        ),
        additional_files=tuple(files),
        refscan_needles=tuple(p.hash_part for p in needle_paths),
    )
    return NixRequest(request, needle_paths, {o.name: o.path for o in drv.outputs})


def _impure_variables(drv: Derivation, attrs: dict[str, object] | None) -> list[str]:
    if attrs is not None:
        listed = attrs.get("impureEnvVars", [])
        return [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
    return drv.environment.get("impureEnvVars", "").split()


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")

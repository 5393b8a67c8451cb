"""The build request model, every protocol rule it must satisfy, and its wire form.

Requests from either family are converted into one frozen value and checked
completely before anything runs, so the rest of the build service can rely on
clean, sorted, non-escaping paths. Each error names the offending field. The
responses of both families are encoded here too, so that every face of the
product (servicers, the ``run`` command, the result cache) answers alike.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.castore.nodes import Node, SymlinkNode, validate_root_node
from builder.castore.wire import Family, node_from_proto, node_to_proto
from builder.errors import InvalidArgumentError
from builder.executor.outputs import CollectedOutput
from builder.proto.snix.build.protos import build_pb2 as snix_build
from builder.proto.tvix.build.protos import build_pb2 as tvix_build
from sandbox.spec import STORE_DIR


@dataclass(frozen=True)
class Constraints:
    system: str
    min_memory: int = 0
    available_ro_paths: tuple[str, ...] = ()
    network_access: bool = False
    provide_bin_sh: bool = False


@dataclass(frozen=True)
class AdditionalFile:
    path: str
    contents: bytes


@dataclass(frozen=True)
class BuildRequest:
    inputs: tuple[Node, ...]
    command_args: tuple[str, ...]
    working_dir: str
    scratch_paths: tuple[str, ...]
    inputs_dir: str
    outputs: tuple[str, ...]
    environment: tuple[tuple[str, bytes], ...]
    constraints: Constraints
    additional_files: tuple[AdditionalFile, ...] = ()
    refscan_needles: tuple[str, ...] = field(default=())

    def validate(self) -> None:
        validate_request(self)


# The sandbox shows a request path at "/" + path, and the kernel takes no
# longer path than PATH_MAX (4096 bytes with its terminating NUL): anything
# longer could not be used inside, only written to the host's disk.
MAX_PATH_BYTES = 4094

# What exec takes at most: one argument or "KEY=VALUE" string of 32 pages
# (MAX_ARG_STRLEN, with its NUL), and arguments and environment together of
# three quarters of 8 MiB, pointers included, whatever the stack limit. A
# request beyond them could never start its command; refusing it here spares
# shipping megabytes to the sandbox only to learn that.
MAX_ARG_BYTES = 32 * 4096
MAX_EXEC_BYTES = 6 << 20


def check_relative_path(path: str, where: str) -> None:
    """Clean relative paths cannot name anything outside the build root."""
    if not path:
        raise InvalidArgumentError(f"{where}: path is empty")
    size = len(path.encode(errors="surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise InvalidArgumentError(
            f"{where}: path is {size} bytes long, more than the limit of {MAX_PATH_BYTES}"
        )
    if "\0" in path:
        raise InvalidArgumentError(f"{where}: {path!r} contains NUL")
    if path.startswith("/"):
        raise InvalidArgumentError(f"{where}: {path!r} must be relative")
    components = path.split("/")
    for component in components:
        if component in ("", ".", ".."):
            shown = component or "empty"
            raise InvalidArgumentError(f"{where}: {path!r} has a {shown!r} component")
    if components[0] == STORE_DIR[1:]:
        raise InvalidArgumentError(
            f"{where}: {path!r} lies in {STORE_DIR[1:]!r}, which the sandbox keeps for itself"
        )


def _check_absolute_path(path: str, where: str) -> None:
    if not path.startswith("/"):
        raise InvalidArgumentError(f"{where}: {path!r} must be absolute")
    if path != "/":
        check_relative_path(path[1:], where)


def _check_sorted(values: list[Any], where: str) -> None:
    for previous, current in itertools.pairwise(values):
        if current <= previous:
            problem = "duplicate" if current == previous else "not sorted"
            raise InvalidArgumentError(f"{where}: {current!r} after {previous!r}: {problem}")


def is_inside(path: str, parent: str) -> bool:
    return path.startswith(parent + "/")


class PathTree:
    """A set of relative paths that tells which of them holds a path, in time linear in
    that path's length: a request may carry millions of paths, and comparing each
    with each would hold a server thread for hours."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self._root: dict[str, dict] = {}
        for path in paths:
            node = self._root
            for component in path.split("/"):
                node = node.setdefault(component, {})
            node[""] = {}

    def holder(self, path: str) -> str | None:
        """The shortest member that ``path`` lies strictly inside, if any."""
        components = path.split("/")
        node = self._root
        for depth, component in enumerate(components[:-1], start=1):
            child = node.get(component)
            if child is None:
                return None
            if "" in child:
                return "/".join(components[:depth])
            node = child
        return None


def validate_request(request: BuildRequest) -> None:
    for i, node in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if not node.name:
            raise InvalidArgumentError(f"{where}: input node has no name")
        validate_root_node(node, where)
    _check_sorted([n.name for n in request.inputs], "inputs")

    if not request.command_args:
        raise InvalidArgumentError("command_args: empty, nothing to run")
    if not request.command_args[0]:
        raise InvalidArgumentError("command_args[0]: empty program name")
    for i, arg in enumerate(request.command_args):
        if "\0" in arg:
            raise InvalidArgumentError(f"command_args[{i}]: contains NUL")

    check_relative_path(request.working_dir, "working_dir")
    check_relative_path(request.inputs_dir, "inputs_dir")
    for i, path in enumerate(request.scratch_paths):
        check_relative_path(path, f"scratch_paths[{i}]")
    _check_sorted(list(request.scratch_paths), "scratch_paths")

    scratch = PathTree(request.scratch_paths)
    for i, path in enumerate(request.outputs):
        where = f"outputs[{i}]"
        check_relative_path(path, where)
        if scratch.holder(path) is None:
            raise InvalidArgumentError(f"{where}: {path!r} is not inside any scratch path")
    _check_sorted(list(request.outputs), "outputs")

    for i, (key, value) in enumerate(request.environment):
        where = f"environment_vars[{i}]"
        if not key:
            raise InvalidArgumentError(f"{where}.key: empty")
        if "=" in key or "\0" in key:
            raise InvalidArgumentError(f"{where}.key: {key!r} contains '=' or NUL")
        if b"\0" in value:
            raise InvalidArgumentError(f"{where}.value: contains NUL")
    _check_sorted([k for k, _ in request.environment], "environment_vars")
    _check_exec_size(request)

    constraints = request.constraints
    if not constraints.system:
        raise InvalidArgumentError("constraints.system: empty")
    for i, path in enumerate(constraints.available_ro_paths):
        _check_absolute_path(path, f"constraints.available_ro_paths[{i}]")
    _check_sorted(list(constraints.available_ro_paths), "constraints.available_ro_paths")

    for i, extra in enumerate(request.additional_files):
        where = f"additional_files[{i}].path"
        check_relative_path(extra.path, where)
        if scratch.holder(extra.path) is None:
            raise InvalidArgumentError(f"{where}: {extra.path!r} is not inside any scratch path")
    seen: set[str] = set()
    for i, extra in enumerate(request.additional_files):
        if extra.path in seen:
            raise InvalidArgumentError(f"additional_files[{i}].path: duplicate {extra.path!r}")
        seen.add(extra.path)

    for i, needle in enumerate(request.refscan_needles):
        if not needle:
            raise InvalidArgumentError(f"refscan_needles[{i}]: empty")

    _check_symlink_inputs(request)


def _check_exec_size(request: BuildRequest) -> None:
    strings = [(f"command_args[{i}]", arg.encode()) for i, arg in enumerate(request.command_args)]
    strings += [
        (f"environment_vars[{i}]", key.encode() + b"=" + value)
        for i, (key, value) in enumerate(request.environment)
    ]
    total = 0
    for where, string in strings:
        size = len(string) + 1
        if size > MAX_ARG_BYTES:
            raise InvalidArgumentError(
                f"{where}: {size} bytes, more than the {MAX_ARG_BYTES} exec takes in one string"
            )
        total += size + 8
    if total > MAX_EXEC_BYTES:
        raise InvalidArgumentError(
            f"command_args and environment_vars: {total} bytes together, more than the "
            f"{MAX_EXEC_BYTES} exec takes"
        )


def _check_symlink_inputs(request: BuildRequest) -> None:
    """No path the service writes or reads on the host may lead through a symlink input.

    A symlink input is a real symlink in the inputs directory, pointing
    wherever the request says; a path at or below it would be resolved on the
    host before the build starts (or after it ends), not inside the sandbox.
    """
    links = PathTree(
        tuple(
            f"{request.inputs_dir}/{os.fsdecode(node.name)}"
            for node in request.inputs
            if isinstance(node, SymlinkNode)
        )
    )
    fields = [("working_dir", request.working_dir)]
    fields += [(f"scratch_paths[{i}]", p) for i, p in enumerate(request.scratch_paths)]
    fields += [(f"outputs[{i}]", p) for i, p in enumerate(request.outputs)]
    fields += [
        (f"additional_files[{i}].path", f.path) for i, f in enumerate(request.additional_files)
    ]
    for where, path in fields:
        link = links.holder(path + "/")
        if link is not None:
            raise InvalidArgumentError(
                f"{where}: {path!r} lies at or below the symlink input {link!r}"
            )


def request_from_proto(msg: Any) -> BuildRequest:
    """Convert a BuildRequest of either family; call ``validate`` before use."""
    c = msg.constraints
    return BuildRequest(
        inputs=tuple(node_from_proto(n, f"inputs[{i}]") for i, n in enumerate(msg.inputs)),
        command_args=tuple(msg.command_args),
        working_dir=msg.working_dir,
        scratch_paths=tuple(msg.scratch_paths),
        inputs_dir=msg.inputs_dir,
        outputs=tuple(msg.outputs),
        environment=tuple((e.key, e.value) for e in msg.environment_vars),
        constraints=Constraints(
            system=c.system,
            min_memory=c.min_memory,
            available_ro_paths=tuple(c.available_ro_paths),
            network_access=c.network_access,
            provide_bin_sh=c.provide_bin_sh,
        ),
        additional_files=tuple(AdditionalFile(f.path, f.contents) for f in msg.additional_files),
        refscan_needles=tuple(msg.refscan_needles),
    )


def request_to_proto(request: BuildRequest, family: Family) -> Any:
    module = tvix_build if family is Family.TVIX else snix_build
    msg = module.BuildRequest
    c = request.constraints
    return msg(
        inputs=[node_to_proto(n, family) for n in request.inputs],
        command_args=request.command_args,
        working_dir=request.working_dir,
        scratch_paths=request.scratch_paths,
        inputs_dir=request.inputs_dir,
        outputs=request.outputs,
        environment_vars=[msg.EnvVar(key=k, value=v) for k, v in request.environment],
        constraints=msg.BuildConstraints(
            system=c.system,
            min_memory=c.min_memory,
            available_ro_paths=c.available_ro_paths,
            network_access=c.network_access,
            provide_bin_sh=c.provide_bin_sh,
        ),
        additional_files=[
            msg.AdditionalFile(path=f.path, contents=f.contents) for f in request.additional_files
        ],
        refscan_needles=request.refscan_needles,
    )


def tvix_response(request: Any, outputs: Sequence[CollectedOutput]) -> Any:
    """A Tvix ``Build``: it echoes the request message, which the result cache leaves out."""
    return tvix_build.Build(
        build_request=request,
        outputs=[node_to_proto(o.node, Family.TVIX) for o in outputs],
        outputs_needles=[tvix_build.Build.OutputNeedles(needles=o.needles) for o in outputs],
    )


def snix_response(outputs: Sequence[CollectedOutput]) -> Any:
    """A Snix ``BuildResponse``, what ``DoBuild``, ``StreamBuild`` and ``run`` answer."""
    return snix_build.BuildResponse(
        outputs=[
            snix_build.BuildResponse.Output(
                output=node_to_proto(o.node, Family.SNIX), needles=o.needles
            )
            for o in outputs
        ]
    )

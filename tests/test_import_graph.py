"""The dependency rules of the README, checked on the source rather than trusted.

Every import counts, at module level or inside a function, under
``TYPE_CHECKING`` or not: an import hidden in a function still ties the two
modules together, it only postpones the failure to the first call.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("builder", "sandbox")

Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imported_names(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every module ``module`` imports; ``from x import y`` means ``x.y`` when that is a module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A dotted module name in a string is imported by name (the registries' backends).
            if "." in node.value and node.value in known:
                yield node.value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield submodule if submodule in known else source


def _graph() -> Graph:
    modules = _modules()
    known = set(modules)
    return {
        module: set(_imported_names(module, path, known)) - {module}
        for module, path in modules.items()
    }


def _internal(graph: Graph) -> Graph:
    return {module: {t for t in targets if t in graph} for module, targets in graph.items()}


def _cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(component)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [_cycle_within(graph, set(component)) for component in components]


def _cycle_within(graph: Graph, component: set[str]) -> list[str]:
    """A path from the smallest member back to itself, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target in sorted(graph[module] & component):
            if target == start:
                return [*paths[module], start]
            if target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    raise AssertionError(f"no cycle in {sorted(component)}")


def _violations(graph: Graph, where: str, allowed: tuple[str, ...]) -> list[str]:
    def inside(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(f"{prefix}.")

    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if inside(module, where)
        for target in targets
        if inside(target, where.split(".")[0])
        and not any(inside(target, prefix) for prefix in allowed)
    )


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "builder.castore.wire" in graph["builder.castore.blobs.grpc"]
    assert "sandbox.launcher" in graph["sandbox"]
    assert "grpc" in graph["builder.server.listen"]
    assert "builder.store.pathinfos.grpc" in graph["builder.store.registry"]


def test_imports_inside_functions_and_relative_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\n"
        "from . import sibling\n"
        "from .sibling import name\n"
        "def f():\n"
        "    from pkg.sub import other\n"
    )
    known = {"pkg.sibling", "pkg.sub.other"}
    assert set(_imported_names("pkg.mod", source, known)) == {
        "os",
        "pkg.sibling",
        "pkg.sub.other",
    }


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    cycles = _cycles(_internal(_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_sandbox_imports_nothing_of_builder() -> None:
    graph = _graph()
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == "sandbox"
        for target in targets
        if target.split(".")[0] == "builder"
    )
    assert not offending, "\n".join(offending)


def test_castore_imports_only_the_stubs_and_the_errors() -> None:
    offending = _violations(
        _graph(), "builder.castore", ("builder.castore", "builder.proto", "builder.errors")
    )
    assert not offending, "\n".join(offending)


def test_store_sits_on_the_castore_alone() -> None:
    offending = _violations(
        _graph(),
        "builder.store",
        ("builder.store", "builder.castore", "builder.proto", "builder.errors"),
    )
    assert not offending, "\n".join(offending)


def test_build_knows_nothing_of_grpc() -> None:
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.startswith("builder.executor.") or module == "builder.executor"
        for target in targets
        if target.split(".")[0] in ("grpc", "grpc_health", "grpc_reflection")
        or target.endswith("_pb2_grpc")
        or target.startswith(("builder.server", "builder.remote"))
    )
    assert not offending, "\n".join(offending)


def test_nothing_imports_the_cli() -> None:
    offending = sorted(
        module
        for module, targets in _graph().items()
        if "builder.cli" in targets and module != "builder.__main__"
    )
    assert not offending, f"imported by {offending}"


def test_nix_serve_sits_on_nix_store_executor_and_remote() -> None:
    offending = _violations(
        _graph(),
        "builder.nixserve",
        (
            "builder.nixserve",
            "builder.nix",
            "builder.store",
            "builder.executor",
            "builder.remote",
            "builder.castore",
            "builder.config_file",
            "builder.errors",
            "builder.logging_setup",
            "builder.process_end",
        ),
    )
    assert not offending, "\n".join(offending)


def test_only_the_entry_points_set_logging_up() -> None:
    """Every other module logs through ``logging`` and leaves the rendering to the entry point."""
    graph = _graph()
    importers = sorted(m for m, targets in graph.items() if "builder.logging_setup" in targets)
    assert importers == ["builder.cli", "builder.nixserve.main"]
    assert not [t for t in graph["builder.logging_setup"] if t.startswith(PACKAGES)]


def test_only_the_command_line_imports_nix_serve() -> None:
    """``builder serve --nix-handoff`` is wired in ``cli.py``; nothing else knows the protocol."""
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if not module.startswith("builder.nixserve")
        for target in targets
        if target.startswith("builder.nixserve")
        and (module, target) != ("builder.cli", "builder.nixserve.handoff_server")
    )
    assert not offending, "\n".join(offending)

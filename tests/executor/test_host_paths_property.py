"""Generated hostile requests and builds never change anything outside their own directories.

Requests carry symlink inputs aimed at a host canary (absolutely or through
``..``), odd values in every path field, and commands that replace scratch
entries and mount-point names with symlinks to the canary. They run through
the real ``BuildService`` with a root launcher; every outcome must be a
success or a product error, and the canary, the materialisation cache and the
builds directory must look exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.castore.blobs.fs import FsBlobService
from builder.castore.directories.sqlite import SqliteDirectoryService
from builder.castore.fs.ingest import ingest_path
from builder.castore.nodes import Node, SymlinkNode
from builder.errors import BuilderError
from builder.executor.config import BuildConfig
from builder.executor.request import AdditionalFile, BuildRequest, Constraints
from builder.executor.service import BuildService
from builder.store.results.memory import MemoryResultCache
from sandbox import Launcher, LauncherConfig
from tests.canary import make_canary, snapshot
from tests.requirements import require_root

COMPONENTS = ["build", "nix", "store", "evil", "aaa-dir", "bbb-file", "out", "sub", ".", "..", ""]
SENSIBLE_SCRATCH = [("build", "nix"), ("build", "nix/store"), ("nix",), ("build",)]
SENSIBLE_DIRS = ["build", "nix/store", "nix", "nix/store/evil/sub", "nix/store/sub"]
SENSIBLE_INPUTS_DIRS = ["nix/store", "nix", "build/in", "store"]
SENSIBLE_FILES = ["nix/store/evil/PWNED", "build/f", "nix/store/aaa-dir/x", "nix/store/sub/f"]
SENSIBLE_OUTPUTS = ["build/out", "build/out", "nix/store/out", "nix/out"]
LINK_NAMES = [b"evil", b"ev\xffil", b"sub"]

# Every build first plants symlinks to the canary wherever it can (each step
# may fail; the next still runs), then writes the usual outputs.
PLANT = """
for s in {scratch}; do
  [ -d "$s" ] || continue
  for e in "$s"/* "$s"/store/*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    n=${{e##*/}}
    mv "$e" "${{e%/*}}/.moved-$n" 2>/dev/null && ln -s {canary}/$n "$e"
  done
done
cd /nix 2>/dev/null && mv store old 2>/dev/null && ln -s {canary} store
ln -s {canary} /build/out 2>/dev/null
ln -s {canary}/keep.txt /nix/store/out 2>/dev/null
true
"""
SCRIPTS = [
    "echo x > /build/out; echo y > /nix/store/out; echo z > /nix/out",
    PLANT,
    "mkdir -p /build && ln -s {canary} /build/sub; ln -s {canary}/sub /nix/store/evil; true",
]


@dataclass
class Host:
    service: BuildService
    canary: Path
    watched: list[Path]
    inputs: tuple[Node, ...]

    def state(self) -> list[dict[str, tuple[int, int, int, bytes]]]:
        return [snapshot(path) for path in self.watched]


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    require_root("the root launcher")
    workspace = Path(tempfile.mkdtemp(prefix="host-paths-property-", dir="/tmp"))
    workspace.chmod(0o755)
    canary = make_canary(workspace / "canary", 0, mode=0o755)
    (canary / "aaa-dir").mkdir()
    (canary / "sub").mkdir()
    (canary / "bbb-file").touch()
    (canary / "out").touch()
    canary.chmod(0o700)
    data = workspace / "data"
    blobs = FsBlobService(data / "blobs")
    directories = SqliteDirectoryService(data / "directories.sqlite")
    src = workspace / "src"
    src.mkdir()
    (src / "data").write_text("directory input\n")
    (workspace / "file").write_text("file input\n")
    inputs = (
        ingest_path(src, blobs, directories, b"aaa-dir"),
        ingest_path(workspace / "file", blobs, directories, b"bbb-file"),
    )
    config = BuildConfig(work_dir=data / "work", result_cache=False, job_slots=1)
    with Launcher(LauncherConfig()) as launcher:
        service = BuildService(config, blobs, directories, launcher, MemoryResultCache())
        try:
            # Fill the materialisation cache, so that later builds only read it.
            service.build(_request("echo x > /build/out", inputs, ("build/out",)))
            service.wait_for_removals()
            watched = [canary, config.work_dir / "cache", config.work_dir / "builds"]
            yield Host(service, canary, watched, inputs)
        finally:
            service.close()
            shutil.rmtree(workspace, ignore_errors=True)


def _request(
    script: str,
    inputs: tuple[Node, ...],
    outputs: tuple[str, ...],
    **fields: object,
) -> BuildRequest:
    values: dict[str, object] = {
        "inputs": inputs,
        "command_args": ("/bin/sh", "-c", script),
        "working_dir": "build",
        "scratch_paths": ("build", "nix"),
        "inputs_dir": "nix/store",
        "outputs": outputs,
        "environment": (("PATH", b"/bin"),),
        "constraints": Constraints(system="x86_64-linux", provide_bin_sh=True),
    }
    values.update(fields)
    return BuildRequest(**values)  # type: ignore[arg-type]


odd_paths = st.builds(
    lambda parts, lead, trail: ("/" if lead else "") + "/".join(parts) + ("/" if trail else ""),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
)


scratch_lists = st.lists(odd_paths, max_size=3).map(lambda paths: tuple(sorted(set(paths))))
FIELDS = ["working_dir", "inputs_dir", "scratch_paths", "outputs", "additional_files"]


@st.composite
def requests(draw: st.DrawFn, host: Host) -> BuildRequest:
    canary = os.fsencode(host.canary)
    targets = [canary, canary + b"/sub", b"..", b"../../..", b"../" * 8 + canary[1:], b"\xff/x"]
    links = {
        name: SymlinkNode(name, draw(st.sampled_from(targets)))
        for name in draw(st.lists(st.sampled_from(LINK_NAMES), max_size=2, unique=True))
    }
    chosen = [n for n in host.inputs if draw(st.booleans()) and n.name not in links]
    inputs = tuple(sorted([*chosen, *links.values()], key=lambda n: n.name))
    # At most one field is odd, so that most examples get as far as running.
    odd = draw(st.sampled_from([None, None, None, *FIELDS]))

    def path(field: str, sensible: list[str]) -> str:
        return draw(odd_paths if odd == field else st.sampled_from(sensible))

    scratch_paths = draw(
        scratch_lists if odd == "scratch_paths" else st.sampled_from(SENSIBLE_SCRATCH)
    )
    script = draw(st.sampled_from(SCRIPTS)).format(
        canary=host.canary, scratch=" ".join("/" + p for p in scratch_paths) or "/build"
    )
    extra = {path("additional_files", SENSIBLE_FILES) for _ in range(draw(st.integers(0, 2)))}
    outputs = {path("outputs", SENSIBLE_OUTPUTS) for _ in range(draw(st.integers(1, 2)))}
    return _request(
        script,
        inputs,
        tuple(sorted(outputs)),
        working_dir=path("working_dir", SENSIBLE_DIRS),
        scratch_paths=scratch_paths,
        inputs_dir=path("inputs_dir", SENSIBLE_INPUTS_DIRS),
        additional_files=tuple(AdditionalFile(p, b"attacker bytes\xff\n") for p in sorted(extra)),
    )


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_nothing_outside_the_build_changes(host: Host, data: st.DataObject) -> None:
    before = host.state()
    request = data.draw(requests(host))
    with contextlib.suppress(BuilderError):
        host.service.build(request)
    host.service.wait_for_removals()
    assert host.state() == before

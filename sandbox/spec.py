"""What to run and how to confine it, as plain data.

The spec crosses a process boundary (client to launcher) and is written by hand
for debugging, so it round-trips through JSON. Byte strings (environment values,
file contents) travel as ``{"base64": ...}`` objects to stay lossless.
"""

import base64
import itertools
import json
import posixpath
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from sandbox.errors import SpecError

ByteLike = str | bytes

#: Where a sandbox mounts the tmpfs its temporary dirs (and capped scratch) come
#: from while it assembles the root; no spec may place anything there.
STORE_DIR = "/.scratch-store"

#: The build user inside, as in Nix's sandbox.
BUILD_UID = 1000
BUILD_GID = 100


@dataclass(frozen=True)
class Bind:
    """A host file or directory shown read-only, nosuid and nodev inside."""

    host: str
    target: str


@dataclass(frozen=True)
class Scratch:
    """A writable directory whose contents the caller collects after the run.

    ``host`` is a directory the caller owns; after the run it holds whatever the
    build left at ``target``. Without a scratch byte limit it is bound directly;
    with one, the build writes to a size-capped tmpfs that is copied back when the
    command ends on its own. Mount targets, files and symlinks nested under
    ``target`` are created in it before the build starts; a symlink on the way
    to one (such as one the caller put there) makes the run fail at setup
    instead of being followed.
    """

    target: str
    host: str


@dataclass(frozen=True)
class File:
    """A file placed in the sandbox before the command starts."""

    target: str
    contents: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    """A symlink placed in the sandbox before the command starts, as files are.

    Inside a scratch dir with a byte limit only the sandbox can put one where
    the build sees it (the host dir is only where the tmpfs is copied back), so
    a caller hands its symlinks over rather than making them in ``host``.
    ``link`` is the text of the link, never followed while the root is built.
    """

    target: str
    link: str


@dataclass(frozen=True)
class Limits:
    """Resource ceilings; ``None`` means unlimited.

    Times are seconds, sizes bytes. ``silence`` is the longest stretch without
    any output; ``scratch_bytes`` caps everything written to scratch, temporary
    dirs, /tmp and /dev/shm, each file, directory or symlink counting as at
    least one page, as scratch is copied back to a disk where each costs that.
    """

    wall_time: float | None = None
    silence: float | None = None
    memory: int | None = None
    processes: int | None = None
    cpu_time: float | None = None
    log_bytes: int | None = None
    scratch_bytes: int | None = None


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to run one command in isolation.

    ``temporary`` dirs are writable like scratch but nobody collects them (a
    Nix build directory), so they live in memory as /tmp does: each a fresh
    tmpfs, or a part of the capped one under a scratch byte limit. Creating
    files there costs nothing on the host's disk and leaves nothing to remove.
    """

    argv: list[str]
    env: dict[str, ByteLike] = field(default_factory=dict)
    cwd: str = "/"
    ro_binds: list[Bind] = field(default_factory=list)
    scratch: list[Scratch] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    files: list[File] = field(default_factory=list)
    symlinks: list[Symlink] = field(default_factory=list)
    network: bool = False
    uid: int = BUILD_UID
    gid: int = BUILD_GID
    ro_paths: list[str] = field(default_factory=list)
    shell: str | None = None
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> None:
        """Reject specs that would be ambiguous or unsafe before any fork."""
        if not self.argv:
            raise SpecError("argv must not be empty")
        if not 0 < self.uid < 65536 or not 0 < self.gid < 65536:
            raise SpecError("uid and gid inside must be in 1..65535")
        _absolute(self.cwd, "cwd")
        targets: list[str] = []
        for bind in self.ro_binds:
            _absolute(bind.host, "bind host")
            targets.append(_absolute(bind.target, "bind target"))
        for path in self.ro_paths:
            targets.append(_absolute(path, "ro path"))
        if self.shell is not None:
            _absolute(self.shell, "shell")
            targets.append("/bin/sh")
        scratch_targets = []
        for scratch in self.scratch:
            _absolute(scratch.host, "scratch host")
            scratch_targets.append(_absolute(scratch.target, "scratch target"))
        for path in self.temporary:
            scratch_targets.append(_absolute(path, "temporary dir"))
        for file in self.files:
            _absolute(file.target, "file target")
        for link in self.symlinks:
            _absolute(link.target, "symlink target")
            if not link.link or "\0" in link.link:
                raise SpecError(f"symlink {link.target}: its text must be non-empty, without NUL")
        # Ordered by components, a target that holds others is directly followed by
        # one of them, so neighbours suffice (comparing each with each would take
        # time in the square of their number).
        by_components = sorted(scratch_targets, key=lambda target: target.split("/"))
        for a, b in itertools.pairwise(by_components):
            if _within(b, a):
                raise SpecError(f"scratch {b} is nested in scratch {a}")
        reserved = ("/proc", "/dev", "/etc", "/tmp")
        placed = [self.cwd, *(f.target for f in self.files), *(s.target for s in self.symlinks)]
        for target in targets + scratch_targets:
            if target == "/" or any(target == r for r in reserved):
                raise SpecError(f"{target} is provided by the sandbox itself")
        for target in targets + scratch_targets + placed:
            if target == STORE_DIR or _within(target, STORE_DIR):
                raise SpecError(f"{target} lies in {STORE_DIR}, which the sandbox uses itself")
            if _within(target, "/proc"):
                raise SpecError(f"{target} lies in /proc")
        if len(set(targets + scratch_targets)) != len(targets) + len(scratch_targets):
            raise SpecError("two mounts share a target")
        for name in self.env:
            if not name or "=" in name or "\0" in name:
                raise SpecError(f"bad environment variable name {name!r}")
        for limit in fields(self.limits):
            value = getattr(self.limits, limit.name)
            if value is not None and value <= 0:
                raise SpecError(f"limit {limit.name} must be positive")

    def to_json(self) -> str:
        return json.dumps(_encode(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "SandboxSpec":
        try:
            raw = _decode(json.loads(text))
            return cls(
                argv=[str(a) for a in raw["argv"]],
                env=dict(raw.get("env", {})),
                cwd=raw.get("cwd", "/"),
                ro_binds=[Bind(**b) for b in raw.get("ro_binds", [])],
                scratch=[Scratch(**s) for s in raw.get("scratch", [])],
                temporary=[str(t) for t in raw.get("temporary", [])],
                files=[_file(f) for f in raw.get("files", [])],
                symlinks=[Symlink(**link) for link in raw.get("symlinks", [])],
                network=bool(raw.get("network", False)),
                uid=int(raw.get("uid", BUILD_UID)),
                gid=int(raw.get("gid", BUILD_GID)),
                ro_paths=list(raw.get("ro_paths", [])),
                shell=raw.get("shell"),
                limits=Limits(**raw.get("limits", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"invalid spec: {exc}") from exc


def _file(raw: dict[str, Any]) -> File:
    contents = raw["contents"]
    if isinstance(contents, str):
        contents = contents.encode()
    return File(target=raw["target"], contents=contents, mode=int(raw.get("mode", 0o644)))


def _absolute(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise SpecError(f"{what} must be an absolute path: {path!r}")
    # normpath keeps two leading slashes (POSIX leaves their meaning open), which
    # would spell a reserved path in a way the checks below do not recognise.
    if (posixpath.normpath(path) != path or path.startswith("//")) and path != "/":
        raise SpecError(f"{what} must be normalised (no '.', '..' or '//'): {path!r}")
    return path


def _within(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip("/") + "/")


def _encode(value: Any) -> Any:
    """JSON-ready data, as ``asdict`` would give but without its deep copy of every value."""
    if is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"base64"}:
            return base64.b64decode(value["base64"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value

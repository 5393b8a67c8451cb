"""Collecting a finished build's outputs from its scratch directories.

The scratch tree was written by an untrusted command, so nothing in it is
followed: each output path is resolved component by component without
following symlinks (a symlink planted as an intermediate directory would
otherwise lead the host-side ingest anywhere on the host), the output itself
is stored as whatever it is, and symlinks inside it are stored as symlinks.
Storing into the castore is itself the canonicalisation: a node records only
kind, contents, the executable bit and symlink targets, never owners,
timestamps or setuid bits.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.castore.blobs.service import READ_CHUNK_SIZE, BlobService
from builder.castore.directories.service import DirectoryService
from builder.castore.fs.descent import DIRECTORY_FLAGS, walk
from builder.castore.fs.ingest import ingest_path
from builder.castore.fs.materialise import materialise_node
from builder.castore.nodes import Node
from builder.errors import BuildFailedError, InvalidArgumentError
from builder.executor.refscan import NeedleScanner
from builder.executor.removal import remove_tree


@dataclass(frozen=True)
class CollectedOutput:
    path: str
    node: Node
    needles: tuple[int, ...]


def resolve_output(root: Path, relative: str, output: str) -> Path:
    """The host path of an output below ``root``, refusing symlinked directories on the way."""
    current = root
    parts = relative.split("/")
    for component in parts[:-1]:
        current = current / component
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            raise BuildFailedError(f"output {output!r} was not produced") from None
        if not stat.S_ISDIR(mode):
            raise BuildFailedError(
                f"output {output!r}: {component!r} on its way is not a directory"
            )
    target = current / parts[-1]
    if not os.path.lexists(target):
        raise BuildFailedError(f"output {output!r} was not produced")
    return target


def scan_needles(path: Path, needles: tuple[str, ...]) -> tuple[int, ...]:
    """Indexes of the needles found in file contents and symlink targets under path."""
    if not needles:
        return ()
    scanner = NeedleScanner(needles)
    raw = os.fsencode(path)
    mode = os.lstat(raw).st_mode
    if stat.S_ISDIR(mode):
        walk(raw, None, _visiting_entries(functools.partial(_scan_entry, scanner=scanner)))
    else:
        parent = os.open(os.path.dirname(raw) or b".", DIRECTORY_FLAGS)
        try:
            _scan_entry(parent, os.path.basename(raw), mode, scanner)
        finally:
            os.close(parent)
    return tuple(scanner.result())


def _visiting_entries(
    visit: Callable[[int, bytes, int], None],
) -> Callable[[int, None], list[tuple[bytes, None]]]:
    """A step of ``walk`` that visits each entry of a directory but its subdirectories
    (with the directory's descriptor, the name and the mode) and returns those to walk.

    The listing is read whole before any visit, so that a visit changing the
    directory cannot disturb it.
    """

    def step(fd: int, _: None) -> list[tuple[bytes, None]]:
        subdirectories = []
        with os.scandir(fd) as listing:
            entries = list(listing)
        for entry in entries:
            name = os.fsencode(entry.name)
            if entry.is_dir(follow_symlinks=False):
                subdirectories.append((name, None))
            else:
                visit(fd, name, entry.stat(follow_symlinks=False).st_mode)
        return subdirectories

    return step


def _scan_entry(dir_fd: int, name: bytes, mode: int, scanner: NeedleScanner) -> None:
    if stat.S_ISLNK(mode):
        scanner.scan_whole(os.readlink(name, dir_fd=dir_fd))
    elif stat.S_ISREG(mode):
        scanner.reset_stream()
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
        with open(fd, "rb", buffering=0) as file:
            while chunk := file.read(READ_CHUNK_SIZE):
                scanner.feed(chunk)
        scanner.reset_stream()


def collect_outputs(
    locations: list[tuple[str, Path, str]],
    needles: tuple[str, ...],
    blobs: BlobService,
    directories: DirectoryService,
) -> list[CollectedOutput]:
    """Ingest every output in request order; any missing one fails the whole build.

    ``locations`` holds, per output, its request path, the host directory
    backing its scratch path, and its path relative to that directory.
    """
    located = [resolve_output(root, relative, output) for output, root, relative in locations]
    collected = []
    for (output, _, _), host_path in zip(locations, located, strict=True):
        node = ingest_path(host_path, blobs, directories)
        collected.append(CollectedOutput(output, node, scan_needles(host_path, needles)))
    return collected


def export_outputs(
    outputs: list[Node],
    out_dir: Path,
    blobs: BlobService,
    directories: DirectoryService,
) -> list[Path]:
    """Write outputs into ``out_dir`` as a Nix store holds them, replacing earlier copies.

    Files are 0444 or 0555, directories 0555, and every timestamp is 1 (the
    Unix epoch plus one second), so exported trees compare equal byte for
    byte and stamp for stamp however often they are written.

    Each output is written beside its final name and renamed into place, so a
    reader sees either the old or the new tree, never a half-written one.

    ``out_dir`` often lies in a directory anyone may write to, such as /tmp,
    where another user may have put a symlink or a directory of their own
    under that name first. Following the one would write and replace entries
    wherever it points; writing into the other would let its owner swap the
    names being written for symlinks meanwhile. So ``out_dir`` must be a real
    directory owned by the caller that others may not write to, and everything
    below it is reached through the descriptor that checked it.
    """
    out_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = _open_own_directory(out_dir)
    try:
        held = Path(f"/proc/self/fd/{fd}")
        written = []
        for node in outputs:
            if not node.name:
                raise InvalidArgumentError("an output without a name cannot be exported")
            name = os.fsdecode(node.name)
            dest = held / name
            staging = held / f".{name}.tmp-{os.getpid()}"
            remove_tree(staging)
            materialise_node(node, staging, blobs, directories, read_only=True)
            _set_epoch_times(staging)
            if os.path.isdir(dest) and not os.path.islink(dest):
                old = held / f".{name}.old-{os.getpid()}"
                os.rename(dest, old)
                os.rename(staging, dest)
                remove_tree(old)
            else:
                os.replace(staging, dest)
            written.append(out_dir / name)
        return written
    finally:
        os.close(fd)


def check_export_target(out_dir: Path) -> None:
    """Refuse, before a build runs, a directory ``export_outputs`` would refuse afterwards.

    An existing directory must pass the same checks as at export; a missing
    one must be creatable: its nearest existing ancestor is a directory this
    user may write to. Nothing is created, so a build that fails leaves no
    empty directory behind.
    """
    try:
        os.lstat(out_dir)
    except FileNotFoundError:
        ancestor = out_dir.absolute().parent
        while not os.path.lexists(ancestor):
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise InvalidArgumentError(
                f"cannot create {out_dir}: {ancestor} is not a directory this user may write to"
            ) from None
        return
    except OSError as error:
        raise InvalidArgumentError(f"cannot export into {out_dir}: {error.strerror}") from None
    os.close(_open_own_directory(out_dir))


def _open_own_directory(path: Path) -> int:
    try:
        fd = os.open(path, DIRECTORY_FLAGS)
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot export into {path}: not a directory (a symlink is not followed): "
            f"{error.strerror}"
        ) from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise InvalidArgumentError(
            f"cannot export into {path}: it belongs to uid {info.st_uid}, not to this user"
        )
    if info.st_mode & stat.S_IWOTH:
        os.close(fd)
        raise InvalidArgumentError(f"cannot export into {path}: anyone may write to it")
    return fd


def _set_epoch_times(root: Path) -> None:
    """Timestamps are set bottom-up, since writing into a directory changes its own."""
    if not os.path.islink(root) and os.path.isdir(root):
        walk(root, None, _visiting_entries(_stamp_entry), _stamp_directory)
    os.utime(root, (1, 1), follow_symlinks=False)


def _stamp_entry(dir_fd: int, name: bytes, _: int) -> None:
    """What is not a directory is stamped at once; directories once their contents are."""
    os.utime(name, (1, 1), dir_fd=dir_fd, follow_symlinks=False)


def _stamp_directory(parent: int, name: bytes, _: None) -> None:
    os.utime(name, (1, 1), dir_fd=parent, follow_symlinks=False)

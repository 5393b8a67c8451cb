"""Host directories that builds must never change, and a way to prove they did not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

Entry = tuple[int, int, int, bytes]


def make_canary(path: Path, owner: int, mode: int = 0o700) -> Path:
    """A directory holding a file, an empty file and an empty directory, owned by ``owner``.

    The default mode keeps out everyone but its owner, as the directories
    the attacks aimed at did.
    """
    path.mkdir()
    (path / "keep.txt").write_bytes(b"canary contents\n")
    for entry in [path, path / "keep.txt"]:
        os.chown(entry, owner, owner)
    path.chmod(mode)
    return path


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry below ``root`` (included): type, mode, owner, contents or target.

    Walks with an explicit stack and never follows a symlink, so what a
    build planted is recorded as itself.
    """
    found: dict[str, Entry] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        info = os.lstat(path)
        kind = stat.S_IFMT(info.st_mode)
        data = b""
        if stat.S_ISLNK(info.st_mode):
            data = os.fsencode(os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            data = path.read_bytes()
        elif stat.S_ISDIR(info.st_mode):
            stack.extend(path.iterdir())
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), info.st_uid, data)
    return found

"""Paths in trees a caller or a build can influence, opened only through directory fds.

Scratch dirs are host directories: the caller may have put symlinks in them
(symlink inputs) and a build may replace anything in them with a symlink to
anywhere on the host. Whoever works on such a tree with host privileges (PID 1
assembling the root, the launcher cleaning up after a run) therefore never
hands the kernel a whole path: it starts from a descriptor it trusts and opens
one component at a time, refusing symlinks, so a path can neither leave the
tree nor be redirected between a check and its use. Each step uses openat2
with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS where the
kernel has it, else openat with O_NOFOLLOW.
"""

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from sandbox import syscalls
from sandbox.errors import SpecError, SyscallError

_RESOLVE = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_openat2_missing = False

#: Called with the parent's fd, the new entry's name and its path from the walk's root.
OnCreate = Callable[[int, str, str], None]


def components(path: str) -> list[str]:
    """The names along ``path`` (absolute or relative); '.', '..' and '' are refused."""
    parts = path.strip("/").split("/") if path.strip("/") else []
    for part in parts:
        if part in ("", ".", ".."):
            raise SpecError(f"{path!r}: a {part or 'empty'!r} component is not allowed")
    return parts


def open_dir(path: str) -> int:
    """An O_PATH fd of a directory the caller named, refusing a symlink as its last step."""
    try:
        return os.open(path, _DIR)
    except OSError as exc:
        raise SpecError(f"{path!r} is not a directory: {exc.strerror}") from None


def open_step(dir_fd: int, name: str, flags: int, mode: int = 0) -> int:
    """Open one entry of ``dir_fd`` without following it if it is a symlink.

    With O_PATH a symlink is opened as itself (so callers check the type);
    otherwise opening one fails with ELOOP.
    """
    global _openat2_missing
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if not _openat2_missing:
        try:
            return syscalls.openat2(dir_fd, name, flags, _RESOLVE, mode)
        except SyscallError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2_missing = True
    return os.open(name, flags, mode, dir_fd=dir_fd)


def walk(root_fd: int, path: str, on_create: OnCreate | None = None) -> int:
    """An O_PATH fd of the directory ``path`` below ``root_fd``, never through a symlink.

    Missing directories are created (0755) when ``on_create`` is given, which
    then hears of each; otherwise a missing one is an error like a symlink is.
    Raises SpecError naming ``path`` and the offending component.
    """
    fd = os.dup(root_fd)
    walked = ""
    try:
        for name in components(path):
            walked += "/" + name
            if on_create is not None and kind(fd, name) is None:
                os.mkdir(name, 0o755, dir_fd=fd)
                on_create(fd, name, walked)
            try:
                step = open_step(fd, name, os.O_PATH | os.O_DIRECTORY)
            except OSError as exc:
                raise _refused(path, walked, exc) from None
            os.close(fd)
            fd = step
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_leaf(dir_fd: int, name: str, shown: str) -> int:
    """An O_PATH fd of the entry ``name`` itself, refused if it is a symlink."""
    try:
        fd = open_step(dir_fd, name, os.O_PATH)
    except OSError as exc:
        raise _refused(shown, shown, exc) from None
    if stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpecError(f"{shown!r} is a symlink; refusing to follow it")
    return fd


def kind(dir_fd: int, name: str) -> int | None:
    """The file type bits of an entry, not following symlinks; None if it is absent."""
    try:
        return stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def remove_created(root: str, path: str, levels: int) -> None:
    """Remove the last ``levels`` components of ``root/path``, deepest first, while empty.

    Anything else, including anything reached only through a symlink or
    anything that vanished, is left alone: it belongs to whoever made it. The
    walk goes down once, then up through ``..`` of each directory it reached,
    so the time is linear in the depth. The run that wrote the tree has ended
    and its scratch dir is one mount, so ``..`` of a directory reached without
    following symlinks is a directory of the same tree, even if the build
    moved it. The first entry that is not empty (or not there) stops the
    removal: its parents cannot be empty either.
    """
    parts = components(path)
    base = len(parts) - min(levels, len(parts))
    created = parts[base:]
    if not created:
        return
    try:
        root_fd = open_dir(root)
    except SpecError:
        return
    try:
        with contextlib.suppress(OSError, SpecError):
            fd = walk(root_fd, "/".join(parts[:base]))
            try:
                for name in created[:-1]:
                    step = open_step(fd, name, os.O_PATH | os.O_DIRECTORY)
                    os.close(fd)
                    fd = step
                for name in reversed(created[1:]):
                    if not _remove_empty(fd, name):
                        return
                    parent = os.open("..", _DIR, dir_fd=fd)
                    os.close(fd)
                    fd = parent
                _remove_empty(fd, created[0])
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _remove_empty(dir_fd: int, name: str) -> bool:
    """Remove an empty directory or empty regular file; whether it was removed."""
    found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(found.st_mode):
        os.rmdir(name, dir_fd=dir_fd)
        return True
    if stat.S_ISREG(found.st_mode) and found.st_size == 0:
        os.unlink(name, dir_fd=dir_fd)
        return True
    return False


def _refused(path: str, walked: str, exc: OSError) -> SpecError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
        return SpecError(f"{path!r}: {walked!r} is a symlink or not a directory; refusing it")
    return SpecError(f"{path!r}: cannot open {walked!r}: {exc.strerror}")

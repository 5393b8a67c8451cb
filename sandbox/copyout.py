"""Moving a size-capped scratch tmpfs back to the caller's host directory.

The tree was written by an untrusted build, so every step works on directory
file descriptors with O_NOFOLLOW: a symlink the build planted is copied as a
symlink, never followed, and a mount point (an input bound inside scratch) is
skipped because it lives on another device.
"""

import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_OPEN_LIMIT = 16


def copy_tree(source: str, dest_fd: int) -> None:
    """Copy the contents of ``source`` into the directory open as ``dest_fd``.

    Depth first with an explicit stack: the build chose the depth, which may
    exceed both the recursion limit and PATH_MAX.
    """
    src = _Chain(os.open(source, _DIR_FLAGS))
    dest = _Chain(os.dup(dest_fd))
    try:
        device = os.fstat(src.fd).st_dev
        pending = [_copy_entries(src.fd, dest.fd, device)]
        modes: list[int] = []
        while True:
            if pending[-1]:
                name, mode = pending[-1].pop()
                src.enter(name)
                dest.enter(name)
                modes.append(mode)
                pending.append(_copy_entries(src.fd, dest.fd, device))
                continue
            pending.pop()
            if not pending:
                return
            src.leave()
            name = dest.leave()
            os.chmod(name, modes.pop(), dir_fd=dest.fd, follow_symlinks=False)
    finally:
        src.close()
        dest.close()


def _copy_entries(src_fd: int, dest_fd: int, device: int) -> list[tuple[str, int]]:
    """Copy files and symlinks; create subdirectories and return them with their modes."""
    subdirectories = []
    for name in os.listdir(src_fd):
        info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if info.st_dev != device:
            continue
        mode = stat.S_IMODE(info.st_mode) & 0o1777
        if stat.S_ISDIR(info.st_mode):
            os.chmod(name, mode | 0o700, dir_fd=src_fd, follow_symlinks=False)
            os.mkdir(name, 0o700, dir_fd=dest_fd)
            subdirectories.append((name, mode))
        elif stat.S_ISREG(info.st_mode):
            _copy_file(src_fd, dest_fd, name, mode)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dest_fd)
    subdirectories.reverse()
    return subdirectories


class _Chain:
    """Open directories from a root to the current one, only the deepest few kept open.

    A tree deeper than the open-file limit would otherwise exhaust it; a
    directory whose descriptor was closed is reopened as ``..`` of its child
    when the walk comes back up, checked by device and inode. (``builder``
    walks host trees the same way; this runtime imports nothing from it.)
    """

    def __init__(self, fd: int) -> None:
        self._fds: list[int | None] = [fd]
        self._ids = [_identity(fd)]
        self._names: list[str] = [""]
        self._lowest_open = 1

    @property
    def fd(self) -> int:
        fd = self._fds[-1]
        assert fd is not None
        return fd

    def enter(self, name: str) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        self._fds.append(fd)
        self._ids.append(_identity(fd))
        self._names.append(name)
        if len(self._fds) - self._lowest_open >= _OPEN_LIMIT:
            closing = self._fds[self._lowest_open]
            assert closing is not None
            os.close(closing)
            self._fds[self._lowest_open] = None
            self._lowest_open += 1

    def leave(self) -> str:
        child = self.fd
        parent = len(self._fds) - 2
        try:
            if self._fds[parent] is None:
                fd = os.open("..", _DIR_FLAGS, dir_fd=child)
                if _identity(fd) != self._ids[parent]:
                    os.close(fd)
                    raise OSError(f"directory at depth {parent} moved during the copy")
                self._fds[parent] = fd
                self._lowest_open = parent
        finally:
            os.close(child)
            self._fds.pop()
            self._ids.pop()
        return self._names.pop()

    def close(self) -> None:
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = []


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _copy_file(src_fd: int, dest_fd: int, name: str, mode: int) -> None:
    os.chmod(name, mode | 0o400, dir_fd=src_fd, follow_symlinks=False)
    reader = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        writer = os.open(name, flags, 0o600, dir_fd=dest_fd)
        try:
            while True:
                sent = os.sendfile(writer, reader, None, _CHUNK)
                if sent == 0:
                    break
            os.fchmod(writer, mode)
        finally:
            os.close(writer)
    finally:
        os.close(reader)

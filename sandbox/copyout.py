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


def copy_tree(source: str, dest_fd: int) -> None:
    """Copy the contents of ``source`` into the directory open as ``dest_fd``."""
    src_fd = os.open(source, _DIR_FLAGS)
    try:
        _copy_dir(src_fd, dest_fd, os.fstat(src_fd).st_dev)
    finally:
        os.close(src_fd)


def _copy_dir(src_fd: int, dest_fd: int, device: int) -> None:
    for name in os.listdir(src_fd):
        info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if info.st_dev != device:
            continue
        mode = stat.S_IMODE(info.st_mode) & 0o1777
        if stat.S_ISDIR(info.st_mode):
            _copy_subdir(src_fd, dest_fd, name, mode, device)
        elif stat.S_ISREG(info.st_mode):
            _copy_file(src_fd, dest_fd, name, mode)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dest_fd)


def _copy_subdir(src_fd: int, dest_fd: int, name: str, mode: int, device: int) -> None:
    os.chmod(name, mode | 0o700, dir_fd=src_fd, follow_symlinks=False)
    os.mkdir(name, 0o700, dir_fd=dest_fd)
    child_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
    try:
        child_dest = os.open(name, _DIR_FLAGS, dir_fd=dest_fd)
        try:
            _copy_dir(child_src, child_dest, device)
            os.fchmod(child_dest, mode)
        finally:
            os.close(child_dest)
    finally:
        os.close(child_src)


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

"""Thin ctypes wrappers for the system calls Python 3.11 does not expose.

Each wrapper raises SyscallError with the real errno so callers can react to
specific failures (EPERM when a namespace is unavailable, EBUSY on cleanup).
"""

import ctypes
import os

from sandbox.errors import SyscallError

# The interpreter's own symbols include libc's: looking libc up by name
# (ctypes.util.find_library) would run ``ldconfig -p`` in every process that
# imports this module, the launcher included.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MNT_DETACH = 0x2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_RECURSIVE = 0x8000
_AT_EMPTY_PATH = 0x1000

OPEN_TREE_CLONE = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_SYS_PIVOT_ROOT = 155
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise SyscallError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount {source!r} on {target!r}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target!r}")


def pivot_root(new_root: str, put_old: str) -> None:
    ret = _libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old))
    _check(ret, "pivot_root")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def open_tree_clone(source: str | int) -> int:
    """A detached copy of the mount tree at ``source`` (submounts included), as an fd.

    Attributes can be set on it before it is attached, and attaching it with
    ``move_mount_onto`` names the target by descriptor rather than by path.
    A descriptor as ``source`` (``O_PATH`` is enough) clones the directory it
    was opened on, wherever its path leads by now, and only that mount: a
    directory the sandbox made for itself never holds mounts of its own, so
    anything found stacked on it is left behind.
    """
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC
    if isinstance(source, int):
        dir_fd, path = source, b""
        flags |= _AT_EMPTY_PATH
    else:
        dir_fd, path = _AT_FDCWD, _b(source)
        flags |= AT_RECURSIVE
    ret = _libc.syscall(_SYS_OPEN_TREE, ctypes.c_int(dir_fd), path, ctypes.c_uint(flags))
    _check(ret, f"open_tree {source!r}")
    return int(ret)


def mount_setattr_fd(tree_fd: int, attr_set: int) -> None:
    """Apply mount flags to a whole (possibly detached) mount tree held by an fd."""
    attr = _MountAttr(attr_set=attr_set)
    ret = _libc.syscall(
        _SYS_MOUNT_SETATTR,
        ctypes.c_int(tree_fd),
        b"",
        ctypes.c_uint(AT_RECURSIVE | _AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr")


def move_mount_onto(tree_fd: int, target_fd: int, shown: str) -> None:
    """Attach a detached mount tree on the file or directory ``target_fd`` refers to."""
    ret = _libc.syscall(
        _SYS_MOVE_MOUNT,
        ctypes.c_int(tree_fd),
        b"",
        ctypes.c_int(target_fd),
        b"",
        ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH),
    )
    _check(ret, f"move_mount onto {shown!r}")


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat with resolution rules; raises SyscallError(ENOSYS) where the kernel lacks it."""
    how = _OpenHow(flags=flags, mode=mode, resolve=resolve)
    ret = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        _b(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    _check(ret, f"openat2 {path!r}")
    return int(ret)


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def clear_ambient_capabilities() -> None:
    ret = _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _check(ret, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSTRUCTION_SIZE = 8


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_seccomp_filter(program: bytes) -> None:
    """Install a compiled classic BPF program as a seccomp filter on this process."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _BPF_INSTRUCTION_SIZE, ctypes.addressof(code))
    ret = _libc.prctl(
        _PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0
    )
    _check(ret, "prctl(PR_SET_SECCOMP)")


_SYS_CLONE = 56
_SIGCHLD = 17
# Called through PyDLL so the GIL stays held across clone, as os.fork does.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc_gil.syscall.restype = ctypes.c_long
_python = ctypes.pythonapi


def clone(flags: int) -> int:
    """fork() that also creates namespaces: returns 0 in the child, its pid in the parent.

    The child starts in the new PID namespace as PID 1, which ``unshare`` cannot
    do for the caller itself. Python's own before/after-fork hooks run exactly as
    in ``os.fork``; like it, this is only safe in a single-threaded process.
    """
    _python.PyOS_BeforeFork()
    pid = _libc_gil.syscall(_SYS_CLONE, ctypes.c_ulong(flags | _SIGCHLD), None, None, None, None)
    err = ctypes.get_errno()
    if pid == 0:
        _python.PyOS_AfterFork_Child()
        return 0
    _python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise SyscallError(err, f"clone: {os.strerror(err)}")
    return pid

"""Host uids for builds run by a root launcher: one per concurrent build, host-wide.

Several launchers may share a host (a server and a one-off CLI run) and the
same configured range. A launcher holds each uid it hands out by an exclusive
``flock`` on a file named after it, in a directory that only the launcher's
own user may enter: nobody else can take a uid or keep builds from one. The
kernel drops a lock when its holder closes the file or dies, so a file left
behind never holds its uid.
"""

import fcntl
import os
import stat
from collections import deque

from sandbox.errors import SetupError, UidsExhaustedError

DEFAULT_LOCK_DIR = "/run/sandbox-build-uids"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class UidPool:
    def __init__(self, base: int, count: int, lock_dir: str) -> None:
        self._dir_fd = open_lock_dir(lock_dir)
        self._free = deque(range(base, base + count))
        self._held: dict[int, int] = {}
        self._range = f"{base}..{base + count - 1}"
        self._count = count

    def claim(self) -> int:
        """Lock the first free uid, trying those another launcher held last."""
        for _ in range(len(self._free)):
            self._free.rotate(-1)
            uid = self._free[-1]
            fd = os.open(str(uid), _LOCK_FLAGS, 0o600, dir_fd=self._dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._free.pop()
            self._held[uid] = fd
            return uid
        raise UidsExhaustedError(
            f"all {self._count} build uids in {self._range} are in use by running builds"
        )

    def release(self, uid: int) -> None:
        os.close(self._held.pop(uid))
        self._free.append(uid)

    def close(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()
        os.close(self._dir_fd)


def open_lock_dir(path: str) -> int:
    """Open (creating it 0700 if absent) a lock directory private to our user.

    Anyone else who can create, remove or lock files in it could hold uids
    away from builds, so anything but a real directory owned by the launcher's
    user and closed to group and others is refused rather than repaired.
    """
    if not os.path.isabs(path):
        raise SetupError(f"build uid lock directory {path!r} is not an absolute path")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SetupError(f"cannot create build uid lock directory {path!r}: {exc}") from exc
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise SetupError(f"build uid lock directory {path!r} is a symlink") from exc
        raise SetupError(f"cannot open build uid lock directory {path!r}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise SetupError(
                f"build uid lock directory {path!r} is owned by uid {info.st_uid}, "
                f"not by the launcher's uid {os.geteuid()}"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise SetupError(
                f"build uid lock directory {path!r} has mode "
                f"{stat.S_IMODE(info.st_mode):04o}; group and others must have no access"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd

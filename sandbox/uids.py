"""Host uids for builds run by a root launcher: one per concurrent build, host-wide.

Several launchers may share a host (a server and a one-off CLI run) and the
same configured range. A launcher holds each uid it hands out by binding an
abstract Unix socket named after it: the kernel refuses a second bind while the
first is open and drops the name when its holder closes it or dies, so no lock
file is ever left behind.
"""

import socket
from collections import deque

from sandbox.errors import SandboxError


class UidPool:
    def __init__(self, base: int, count: int) -> None:
        self._free = deque(range(base, base + count))
        self._held: dict[int, socket.socket] = {}

    def claim(self) -> int:
        for _ in range(len(self._free)):
            uid = self._free.popleft()
            holder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                holder.bind(f"\0sandbox-build-uid-{uid}")
            except OSError:
                holder.close()
                self._free.append(uid)
                continue
            self._held[uid] = holder
            return uid
        raise SandboxError("no free build uid in the configured range")

    def release(self, uid: int) -> None:
        self._held.pop(uid).close()
        self._free.append(uid)

    def close(self) -> None:
        for holder in self._held.values():
            holder.close()
        self._held.clear()

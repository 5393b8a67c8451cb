"""Noticing that Nix hung up while a build runs, so the build does not run on for nobody.

During a build the client sends nothing, so nothing reads the connection;
a thread polls it for a hang-up instead (the client's end closed: HUP on a
pipe, RDHUP on a socket) and cancels the build. A private pipe wakes the
thread when the build ends first.
"""

from __future__ import annotations

import os
import select
import threading

from builder.executor.cancel import CancelToken

_HANGUP = select.POLLHUP | select.POLLRDHUP | select.POLLERR


class HangupWatcher:
    def __init__(self, fd: int, cancel: CancelToken) -> None:
        self._fd = fd
        self._cancel = cancel
        self._wake_read, self._wake_write = os.pipe()
        self.hung_up = False
        self._thread = threading.Thread(target=self._watch, name="hangup-watch", daemon=True)

    def __enter__(self) -> HangupWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        os.write(self._wake_write, b"\0")
        self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._fd, _HANGUP)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if events.get(self._fd, 0) & _HANGUP:
                self.hung_up = True
                self._cancel.cancel()
                return
            if self._wake_read in events:
                return

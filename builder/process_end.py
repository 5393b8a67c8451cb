"""How the entry points end their process: flush what was written, then exit without teardown.

When a command returns, it has already closed its stores and stopped its
launcher and threads. What the interpreter would still do is dismantle the
few hundred modules a build imports, which costs tens of milliseconds and
leaves nothing behind that anyone reads. That matters where a process is
started per derivation: Nix starts ``builder-nix-serve`` once per offloaded
build, and scripts call ``builder nix build`` once per derivation. So the
entry points end with ``os._exit`` once the standard streams and the log
handlers are flushed; ``main`` itself still returns its status, for callers
in the same process.
"""

from __future__ import annotations

import os
import sys

# The Nix relay imports this before its handshake, and loads neither typing
# nor logging: the annotation needs typing only when checked.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# The status of a process whose output could not be delivered (the reader
# closed the pipe): the command's own status would claim it was.
UNDELIVERED = 1


def end_process(status: int) -> NoReturn:
    """Exit with ``status`` once everything written so far is out of the process.

    Log handlers are flushed only where logging was loaded at all.
    """
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if status == 0:
                status = UNDELIVERED
    os._exit(status)

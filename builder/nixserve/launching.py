"""The sandbox launcher of a connection to a data directory, spawned as early as possible.

Starting the launcher (an interpreter that imports the sandbox, then claims
cgroups, a uid and a spare PID 1) takes about as long as this process takes
to import the store and the executor and to receive a build's inputs. Spawned
right after the handshake, it starts on the other core meanwhile, and a build
finds it ready instead of waiting for it. One spare suffices: Nix sends one
build per connection. A connection that never builds stops it at its end.
"""

from __future__ import annotations

import threading

from builder.errors import FailedPreconditionError
from builder.nixserve.options import ServeOptions
from sandbox.errors import LauncherError
from sandbox.launcher import Launcher, LauncherConfig

SPARES = 1


def spawn_launcher() -> Launcher:
    """Start a launcher without waiting; it forks, so only while this process has one thread."""
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate())
        raise FailedPreconditionError(
            f"the sandbox launcher must start before any thread, found: {names}"
        )
    return Launcher(LauncherConfig(spares=SPARES)).spawn()


def early_launcher(options: ServeOptions) -> Launcher | None:
    """A launcher for a data directory that may build (``--write``); none for a server."""
    if not options.write or options.store_is_server:
        return None
    try:
        return spawn_launcher()
    except LauncherError:
        # A connection that never builds needs no launcher; the first build
        # spawns one again and reports why it cannot start.
        return None

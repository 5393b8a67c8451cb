"""The network a build without network access gets: a loopback and nothing else.

A fresh network namespace starts with ``lo`` down; builds that run a local
test server expect 127.0.0.1 to work, as it does in Nix's sandbox.
"""

from pyroute2 import IPRoute


def bring_up_loopback() -> None:
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=index, state="up")

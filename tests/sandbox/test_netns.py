"""The netlink request that brings up a sandbox's loopback, laid out by hand.

A netlink library encodes the same request independently; the sandboxes'
``lo`` being up is checked beside Nix's in test_nix_parity.py.
"""

from __future__ import annotations

import socket

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from sandbox.netns import encode_loopback_up


def test_the_request_is_the_one_a_netlink_library_encodes() -> None:
    message = ifinfmsg()
    message["family"] = socket.AF_UNSPEC
    message["flags"] = IFF_UP
    message["change"] = IFF_UP
    message["attrs"] = [("IFLA_IFNAME", "lo")]
    message["header"]["type"] = RTM_NEWLINK
    message["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    message["header"]["sequence_number"] = 1
    message.encode()
    assert encode_loopback_up() == bytes(message.data)

"""The network a build without network access gets: a loopback and nothing else.

A fresh network namespace starts with ``lo`` down; builds that run a local
test server expect 127.0.0.1 to work, as it does in Nix's sandbox. The netlink
request is encoded with pyroute2 once, when the launcher imports this module,
and only sent in each sandbox: a full pyroute2 session costs tens of
milliseconds in a freshly forked process, more than the rest of the setup.
"""

import os
import socket

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nlmsgerr
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from sandbox.errors import SyscallError


def _encode_loopback_up() -> bytes:
    message = ifinfmsg()
    message["family"] = socket.AF_UNSPEC
    message["flags"] = IFF_UP
    message["change"] = IFF_UP
    message["attrs"] = [("IFLA_IFNAME", "lo")]
    message["header"]["type"] = RTM_NEWLINK
    message["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    message["header"]["sequence_number"] = 1
    message.encode()
    return bytes(message.data)


_LOOPBACK_UP = _encode_loopback_up()


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(_LOOPBACK_UP)
        reply = nlmsgerr(sock.recv(4096))
    reply.decode()
    error = reply["error"]
    if error:
        raise SyscallError(-error, f"bringing up lo: {os.strerror(-error)}")

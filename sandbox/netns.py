"""The network a build without network access gets: a loopback and nothing else.

A fresh network namespace starts with ``lo`` down; builds that run a local
test server expect 127.0.0.1 to work, as it does in Nix's sandbox.

The netlink request is a fixed 40 bytes, laid out here with ``struct`` once
per launcher and only sent from each sandbox. A netlink library would cost
every launcher start some 0.1 s of imports (and, imported into the launcher,
some 20 MB paid again on every clone), and a launcher starts with every
``builder-nix-serve`` connection that builds.
"""

import os
import socket
import struct

from sandbox.errors import SandboxError, SyscallError

_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_IFF_UP = 0x1
_IFLA_IFNAME = 3
# struct nlmsghdr, struct ifinfomsg and struct rtattr of <linux/netlink.h> and <linux/rtnetlink.h>.
_HEADER = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")
_ALIGN = 4


def encode_loopback_up() -> bytes:
    """The RTM_NEWLINK request that sets IFF_UP on the interface named ``lo``, asking for an ack."""
    name = b"lo\0"
    attribute = _RTATTR.pack(_RTATTR.size + len(name), _IFLA_IFNAME) + name
    attribute += bytes(-len(attribute) % _ALIGN)
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, _IFF_UP, _IFF_UP) + attribute
    flags = _NLM_F_REQUEST | _NLM_F_ACK
    return _HEADER.pack(_HEADER.size + len(body), _RTM_NEWLINK, flags, 1, 0) + body


def bring_up_loopback(request: bytes) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(request)
        reply = sock.recv(4096)
    _, kind, _, _, _ = _HEADER.unpack_from(reply)
    if kind != _NLMSG_ERROR:
        raise SandboxError(f"unexpected netlink reply type {kind} bringing up lo")
    (error,) = _ERROR.unpack_from(reply, _HEADER.size)
    if error:
        raise SyscallError(-error, f"bringing up lo: {os.strerror(-error)}")

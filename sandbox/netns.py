"""The network a build without network access gets: a loopback and nothing else.

A fresh network namespace starts with ``lo`` down; builds that run a local
test server expect 127.0.0.1 to work, as it does in Nix's sandbox.

The netlink request is encoded with pyroute2 once per launcher, in a throwaway
child, and only sent from each sandbox. Importing pyroute2 grows a process by
some 20 MB, and the launcher's size is paid on every clone (page tables, then
copy-on-write faults); a pyroute2 session in a fresh clone also costs tens of
milliseconds, more than the rest of the setup.
"""

import os
import socket
import struct

from sandbox.errors import SandboxError, SyscallError

_NLMSG_ERROR = 2
_HEADER = struct.Struct("=IHHII")
_ERROR = struct.Struct("=i")


def encode_loopback_up() -> bytes:
    """The RTM_NEWLINK request that sets IFF_UP on ``lo``, as pyroute2 encodes it."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

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


def encode_in_child() -> bytes:
    """Run ``encode_loopback_up`` in a forked child so pyroute2 stays out of us.

    Only for a single-threaded caller (the launcher, at start-up).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            os.write(write_fd, encode_loopback_up())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        request = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not request:
        raise SandboxError("could not encode the netlink request for lo")
    return request


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

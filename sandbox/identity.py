"""The user database and host table a build sees, as Nix's sandbox presents them.

Builds call getpwuid() and friends; tools break in odd ways when their own uid
has no name, so the sandbox writes a minimal, fixed set of entries.
"""

HOSTNAME = "localhost"
DOMAINNAME = "(none)"


def passwd(uid: int, gid: int) -> str:
    return (
        "root:x:0:0:Nix build user:/build:/noshell\n"
        f"nixbld:x:{uid}:{gid}:Nix build user:/build:/noshell\n"
        "nobody:x:65534:65534:Nobody:/:/noshell\n"
    )


def group(gid: int) -> str:
    return f"root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n"


def hosts() -> str:
    return "127.0.0.1 localhost\n::1 localhost\n"

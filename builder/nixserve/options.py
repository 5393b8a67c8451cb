"""The command line Nix starts: ``builder-nix-serve --serve --write [--store X]``.

Parsed before the handshake is answered, and Nix's scheduler waits for that
answer before it starts its next connection; on a host busy with builds every
millisecond of interpreter work stretches several times. So the four options
are read here directly, with argparse's conventions (``--opt VALUE`` or
``--opt=VALUE``, exit status 2 and a usage line on a mistake) but without its
import, which costs more than the rest of the start-up before the handshake.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

GRPC_PREFIXES = ("grpc+unix://", "grpc+http://", "grpc+https://", "grpc+dns://")
HANDOFF_PREFIX = "handoff+unix://"


class ServeOptions:
    __slots__ = ("config", "store", "write")

    def __init__(self, store: str | None, config: str | None, write: bool) -> None:
        self.store = store
        self.config = config
        self.write = write

    @property
    def store_is_server(self) -> bool:
        """Whether ``--store`` names a ``builder serve`` rather than a data directory."""
        return self.store is not None and self.store.startswith(GRPC_PREFIXES)

    @property
    def handoff_socket(self) -> str | None:
        """The hand-off socket of a running ``builder serve`` that ``--store`` names, if any."""
        if self.store is None or not self.store.startswith(HANDOFF_PREFIX):
            return None
        return self.store.removeprefix(HANDOFF_PREFIX)


PROGRAM = "builder-nix-serve"
USAGE = f"usage: {PROGRAM} --serve [--write] [--store DIR_OR_URL] [--config FILE]"
HELP = f"""{USAGE}

Build for Nix as an ssh:// remote builder (remote-program={PROGRAM}).

options:
  -h, --help          show this help message and exit
  --serve             speak the serve protocol (required)
  --write             allow imports and builds
  --store DIR_OR_URL  data directory (absolute path), a server:
                      grpc+unix:///SOCKET, grpc+http://HOST:PORT,
                      grpc+https://HOST:PORT, grpc+dns:///NAME:PORT (several
                      builders as a comma-separated list; busy or lost builds
                      are retried on the next), or a server's hand-off socket:
                      handoff+unix:///SOCKET (default: the default data directory)
  --config FILE       TOML with tls_ca, tls_cert, tls_key, token_file for the
                      server, relative to the file's directory (else
                      $BUILDER_TLS_CA, $BUILDER_TLS_CERT, $BUILDER_TLS_KEY,
                      $BUILDER_TOKEN_FILE)
"""
_FLAGS = ("--serve", "--write")
_VALUED = ("--store", "--config")


def _usage_error(message: str) -> SystemExit:
    print(f"{USAGE}\n{PROGRAM}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def parse_options(argv: Sequence[str]) -> ServeOptions:
    """Exits with status 2 on anything Nix would not have passed, 0 after ``--help``."""
    flags: set[str] = set()
    values: dict[str, str] = {}
    unknown: list[str] = []
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if arg in ("-h", "--help"):
            print(HELP, end="")
            raise SystemExit(0)
        if arg in _FLAGS:
            flags.add(arg)
        elif name in _VALUED:
            if not has_value:
                value = next(args, "")
                if not value or value.startswith("--"):
                    raise _usage_error(f"argument {name}: expected one argument")
            values[name] = value
        else:
            unknown.append(arg)
    if unknown:
        raise _usage_error(f"unrecognized arguments: {' '.join(unknown)}")
    if "--serve" not in flags:
        raise _usage_error("--serve is required: this program only speaks Nix's serve protocol")
    return ServeOptions(values.get("--store"), values.get("--config"), "--write" in flags)

"""The command line Nix starts: ``builder-nix-serve --serve --write [--store X]``.

Parsed before the handshake is answered, and Nix's scheduler waits for that
answer before it starts its next connection: so only ``argparse`` is loaded
here, not ``dataclasses`` or ``pathlib``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

GRPC_PREFIXES = ("grpc+unix://", "grpc+http://", "grpc+https://")
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


def parse_options(argv: Sequence[str]) -> ServeOptions:
    """Exits with status 2 (argparse's convention) on anything Nix would not have passed."""
    parser = argparse.ArgumentParser(
        prog="builder-nix-serve",
        description="Build for Nix as an ssh:// remote builder (remote-program=builder-nix-serve).",
    )
    parser.add_argument("--serve", action="store_true", help="speak the serve protocol (required)")
    parser.add_argument("--write", action="store_true", help="allow imports and builds")
    parser.add_argument(
        "--store",
        metavar="DIR_OR_URL",
        help="data directory (absolute path), a server: grpc+unix:///SOCKET, "
        "grpc+http://HOST:PORT, grpc+https://HOST:PORT, or a server's hand-off socket: "
        "handoff+unix:///SOCKET (default: the default data directory)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML with tls_ca, tls_cert, tls_key, token_file for the server "
        "(else $BUILDER_TLS_CA, $BUILDER_TLS_CERT, $BUILDER_TLS_KEY, $BUILDER_TOKEN_FILE)",
    )
    args = parser.parse_args(argv)
    if not args.serve:
        parser.error("--serve is required: this program only speaks Nix's serve protocol")
    return ServeOptions(args.store, args.config, args.write)

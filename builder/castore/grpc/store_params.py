"""How a store configuration describes a remote castore server, for both service kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.castore.composition import Params
from builder.castore.grpc.security import ChannelSecurity, read_channel_security
from builder.castore.wire import Family

# Every grpc+ address a client can dial (grpc+unix, grpc+http, grpc+https).
GRPC_SCHEMES = ("grpc+",)


def grpc_url_params(url: str) -> dict[str, Any]:
    return {"url": url}


def family_param(params: Params) -> Family:
    return Family(params.string("family", "tvix"))


def security_params(params: Params) -> ChannelSecurity:
    """TLS material and a bearer token, each read from the file a parameter names."""

    def path(key: str) -> Path | None:
        value = params.string(key, "")
        return Path(value) if value else None

    return read_channel_security(
        path("tls_ca"),
        path("tls_cert"),
        path("tls_key"),
        path("token_file"),
        lambda setting: f"{params.where}: {setting}",
    )

"""Client channels: an address and its security turned into a ready gRPC channel."""

from __future__ import annotations

import json

import grpc

from builder.castore.grpc.endpoint import HTTPS_SCHEME, parse_client_endpoint
from builder.castore.grpc.security import ChannelSecurity
from builder.castore.grpc.token import BearerToken
from builder.errors import InvalidArgumentError

# Blob data travels in 1 MiB messages; Directory messages of very wide trees
# are the only large ones, so both limits are raised well above gRPC's 4 MiB
# default without making a single message unbounded. Servers take the same.
MAX_MESSAGE_SIZE = 64 << 20

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
]

# An address may stand for several servers (a list, or a DNS name with several
# records): each call goes to the next connected one, so a dead one gets none.
_SPREAD = {"loadBalancingConfig": [{"round_robin": {}}]}
# Build channels also skip servers not reporting SERVING on the standard health
# service, so a draining builder gets no new builds. Castore and PathInfo
# channels do not: a draining server still answers those calls, and a client
# fetching the outputs of a build that finished during the drain needs them.
# A server without the health service counts as healthy.
_SPREAD_HEALTHY = {**_SPREAD, "healthCheckConfig": {"serviceName": ""}}


def _client_options(service_config: dict[str, object]) -> list[tuple[str, int | str]]:
    return [
        *CHANNEL_OPTIONS,
        ("grpc.service_config", json.dumps(service_config)),
        # A service config published in DNS TXT records must not replace ours.
        ("grpc.service_config_disable_resolution", 1),
    ]


def open_channel(
    url: str, security: ChannelSecurity | None = None, *, health_checked: bool = False
) -> grpc.Channel:
    """A channel to every server ``url`` names (forms: ``parse_client_endpoint``);
    ``health_checked`` for build calls, which only healthy servers should get."""
    endpoint = parse_client_endpoint(url)
    security = security or ChannelSecurity()
    options = _client_options(_SPREAD_HEALTHY if health_checked else _SPREAD)
    if endpoint.tls_name is not None:
        options.append(("grpc.ssl_target_name_override", endpoint.tls_name))
    if endpoint.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=security.root_certificates,
            private_key=security.client_key,
            certificate_chain=security.client_cert,
        )
        channel = grpc.secure_channel(endpoint.target, credentials, options=options)
    elif security.root_certificates or security.client_key or security.client_cert:
        raise InvalidArgumentError(f"{url!r}: TLS settings need a {HTTPS_SCHEME}:// address")
    else:
        channel = grpc.insecure_channel(endpoint.target, options=options)
    if security.token:
        channel = grpc.intercept_channel(channel, BearerToken(security.token))
    return channel

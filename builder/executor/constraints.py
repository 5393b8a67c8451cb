"""Whether this builder can honour a request's constraints at all."""

from __future__ import annotations

import os

from builder.errors import FailedPreconditionError
from builder.executor.config import BuildConfig
from builder.executor.request import Constraints


def check_constraints(constraints: Constraints, config: BuildConfig) -> None:
    """Refuse up front what could only fail later, or what the operator forbids."""
    if constraints.system not in config.systems:
        raise FailedPreconditionError(
            f"constraints.system: {constraints.system!r} is not supported here "
            f"(supported: {', '.join(config.systems)})"
        )
    if constraints.min_memory > config.host_memory:
        raise FailedPreconditionError(
            f"constraints.min_memory: {constraints.min_memory} bytes requested, "
            f"this host has {config.host_memory}"
        )
    for i, path in enumerate(constraints.available_ro_paths):
        if path not in config.allowed_ro_paths:
            raise FailedPreconditionError(
                f"constraints.available_ro_paths[{i}]: {path!r} is not on the operator's allow-list"
            )
        if not os.path.exists(path):
            raise FailedPreconditionError(
                f"constraints.available_ro_paths[{i}]: {path!r} does not exist on this host"
            )
    if constraints.network_access and not config.allow_network:
        raise FailedPreconditionError(
            "constraints.network_access: this builder does not allow network access "
            "(start it with --allow-network)"
        )
    if constraints.provide_bin_sh and config.shell is None:
        raise FailedPreconditionError(
            "constraints.provide_bin_sh: no static shell is configured on this builder"
        )

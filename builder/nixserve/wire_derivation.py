"""The derivation ``BuildDerivation`` sends inline, read off the wire and then checked.

Reading and checking are separate: a derivation that breaks a rule (an
output without a path, a malformed store path) must still be read to its
end, so that the build can be refused in the protocol rather than by
dropping the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import InvalidArgumentError
from builder.nix.derivation import Derivation, DerivationOutput
from builder.nixserve.wire import (
    MAX_ENV_VALUE_LENGTH,
    MAX_PATH_LENGTH,
    ProtocolError,
    WireReader,
)
from builder.store.store_path import StorePath

MAX_OUTPUTS = 1024
MAX_HASH_TEXT = 256
# All arguments and environment values together: a bound on what one derivation may hold in memory.
MAX_DERIVATION_BYTES = 256 << 20


@dataclass(frozen=True)
class WireDerivation:
    outputs: tuple[tuple[str, str, str, str], ...]
    input_sources: tuple[str, ...]
    platform: str
    builder: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_DERIVATION_BYTES

    def take(self, text: str, field: str) -> str:
        self.left -= len(text)
        if self.left < 0:
            raise ProtocolError(
                f"{field}: the derivation holds more than {MAX_DERIVATION_BYTES} bytes"
            )
        return text


def read_derivation(reader: WireReader) -> WireDerivation:
    outputs = []
    for i in range(reader.count("outputs", MAX_OUTPUTS)):
        outputs.append(
            (
                reader.string(f"outputs[{i}].name", MAX_PATH_LENGTH),
                reader.path(f"outputs[{i}].path"),
                reader.string(f"outputs[{i}].hashAlgo", MAX_HASH_TEXT),
                reader.string(f"outputs[{i}].hash", MAX_HASH_TEXT),
            )
        )
    sources = reader.paths("inputSrcs")
    platform = reader.string("platform", MAX_PATH_LENGTH)
    builder = reader.string("builder", MAX_PATH_LENGTH)
    budget = _Budget()
    args = [
        budget.take(reader.string(f"args[{i}]", MAX_ENV_VALUE_LENGTH), f"args[{i}]")
        for i in range(reader.count("args"))
    ]
    env = []
    for i in range(reader.count("env")):
        key = budget.take(reader.string(f"env[{i}].key", MAX_PATH_LENGTH), f"env[{i}].key")
        value = budget.take(reader.string(f"env[{i}].value", MAX_ENV_VALUE_LENGTH), f"env[{i}]")
        env.append((key, value))
    return WireDerivation(
        tuple(outputs), tuple(sources), platform, builder, tuple(args), tuple(env)
    )


def to_derivation(wire: WireDerivation) -> Derivation:
    """Check the derivation as ``.drv`` parsing would; input derivations arrive as sources."""
    if not wire.outputs:
        raise InvalidArgumentError("outputs: a derivation needs at least one output")
    outputs = []
    for i, (name, path, algo, digest) in enumerate(wire.outputs):
        if not path:
            raise InvalidArgumentError(
                f"outputs[{i}] ({name!r}): no output path; content-addressed derivations "
                "with floating outputs are not supported"
            )
        if bool(algo) != bool(digest):
            raise InvalidArgumentError(f"outputs[{i}]: hashAlgo and hash must be given together")
        outputs.append(
            DerivationOutput(name, StorePath.parse(path, f"outputs[{i}].path"), algo, digest)
        )
    _unique([o.name for o in outputs], "outputs")
    _unique([k for k, _ in wire.env], "env")
    sources = tuple(
        StorePath.parse(text, f"inputSrcs[{i}]") for i, text in enumerate(wire.input_sources)
    )
    return Derivation(
        outputs=tuple(outputs),
        input_derivations=(),
        input_sources=sources,
        system=wire.platform,
        builder=wire.builder,
        args=wire.args,
        env=wire.env,
    )


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidArgumentError(f"{where}: {name!r} appears twice")
        seen.add(name)

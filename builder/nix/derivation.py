"""Derivations as ``nix-instantiate`` writes them to ``.drv`` files.

The file is the contract between Nix evaluation and building: outputs with
their paths (and, for fixed outputs, the expected hash), the derivations and
sources it needs, and how to run the builder. Everything is validated while
parsing so later stages can use paths as node names without further checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InvalidArgumentError
from builder.nix.aterm import ATermReader
from builder.store.store_path import StorePath


@dataclass(frozen=True)
class DerivationOutput:
    name: str
    path: StorePath
    hash_algo: str = ""
    hash: str = ""


@dataclass(frozen=True)
class Derivation:
    outputs: tuple[DerivationOutput, ...]
    input_derivations: tuple[tuple[StorePath, tuple[str, ...]], ...]
    input_sources: tuple[StorePath, ...]
    system: str
    builder: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @property
    def is_fixed_output(self) -> bool:
        return len(self.outputs) == 1 and bool(self.outputs[0].hash)

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.env)

    def validate(self, where: str = "") -> None:
        """What every derivation must satisfy, however it arrived (``.drv`` file or wire)."""
        if not self.outputs:
            raise InvalidArgumentError(f"{where}outputs: a derivation needs at least one output")
        _check_unique([o.name for o in self.outputs], f"{where}outputs")
        _check_unique([k for k, _ in self.env], f"{where}env")

    def structured_attrs(self) -> dict[str, Any] | None:
        """The attributes of a ``__structuredAttrs`` derivation, which Nix keeps in ``__json``."""
        raw = self.environment.get("__json")
        if raw is None:
            return None
        try:
            attrs = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"env __json: not valid JSON: {exc}") from None
        if not isinstance(attrs, dict):
            raise InvalidArgumentError("env __json: not a JSON object")
        return attrs


def load_derivation(path: str | Path) -> Derivation:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidArgumentError(f"derivation {str(path)!r} does not exist") from None
    return parse_derivation(data, str(path))


def parse_derivation(data: bytes, source: str = "derivation") -> Derivation:
    """Parse the ATerm text; Nix strings are bytes, so non-UTF-8 bytes survive as escapes."""
    reader = ATermReader(data.decode("utf-8", "surrogateescape"), source)
    reader.expect("Derive(", "header")
    outputs = reader.list(lambda f: _output(reader, f), "outputs")
    reader.expect(",", "outputs")
    input_drvs = reader.list(lambda f: _input_derivation(reader, f), "inputDrvs")
    reader.expect(",", "inputDrvs")
    sources = reader.list(lambda f: _store_path(reader, f), "inputSrcs")
    reader.expect(",", "inputSrcs")
    system = reader.string("system")
    reader.expect(",", "system")
    builder = reader.string("builder")
    reader.expect(",", "builder")
    args = reader.strings("args")
    reader.expect(",", "args")
    env = reader.list(lambda f: _pair(reader, f), "env")
    reader.expect(")", "env")
    reader.end()
    drv = Derivation(
        outputs=tuple(outputs),
        input_derivations=tuple(input_drvs),
        input_sources=tuple(sources),
        system=system,
        builder=builder,
        args=tuple(args),
        env=tuple(env),
    )
    drv.validate(f"{source}: ")
    return drv


def _store_path(reader: ATermReader, field: str) -> StorePath:
    start = reader.pos
    text = reader.string(field)
    try:
        return StorePath.parse(text, field)
    except InvalidArgumentError as exc:
        reader.pos = start
        raise reader.error(field, str(exc)) from None


def _output(reader: ATermReader, field: str) -> DerivationOutput:
    reader.expect("(", field)
    name = reader.string(f"{field}.name")
    reader.expect(",", field)
    path = _store_path(reader, f"{field}.path")
    reader.expect(",", field)
    algo = reader.string(f"{field}.hashAlgo")
    reader.expect(",", field)
    digest = reader.string(f"{field}.hash")
    reader.expect(")", field)
    if bool(algo) != bool(digest):
        raise reader.error(field, "hashAlgo and hash must be given together")
    return DerivationOutput(name, path, algo, digest)


def _input_derivation(reader: ATermReader, field: str) -> tuple[StorePath, tuple[str, ...]]:
    reader.expect("(", field)
    path = _store_path(reader, f"{field}.path")
    reader.expect(",", field)
    names = reader.strings(f"{field}.outputs")
    reader.expect(")", field)
    return path, tuple(names)


def _pair(reader: ATermReader, field: str) -> tuple[str, str]:
    reader.expect("(", field)
    key = reader.string(f"{field}.key")
    reader.expect(",", field)
    value = reader.string(f"{field}.value")
    reader.expect(")", field)
    return key, value


def _check_unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidArgumentError(f"{where}: {name!r} appears twice")
        seen.add(name)

"""The TOML form of a BuildRequest: what a person writes by hand.

Protobuf JSON wants base64 for every ``bytes`` field, and text format wants
C escapes; neither is how a person writes an environment variable or a file.
Here every value is plain UTF-8 text, and bytes that are not UTF-8 say so
explicitly with ``{ base64 = "..." }`` or ``{ hex = "..." }``. Keys are the
protobuf field names, so the errors of request validation name the keys
written here; the two lists whose order carries no meaning beyond the
protocol's sorting (``environment_vars`` and ``inputs``) are tables keyed by
name, and ``additional_files`` is a table keyed by path. An input may also be
a host path to import (``{ path = "src" }``, relative to the request file),
which the caller ingests into its store, as with ``--import``.

Every key is checked: an unknown key, a value of the wrong type or out of
range is an error naming the key, never ignored. The result is a protobuf
message, so the one validation of every other form applies unchanged.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.castore.digest import Digest
from builder.errors import InvalidArgumentError
from builder.proto.snix.build.protos import build_pb2 as snix_build

UINT64_LIMIT = 1 << 64

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# What a TOML basic string cannot hold as itself: the quote, the backslash and
# control characters other than tab.
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x08\x0a-\x1f\x7f]')
# What a TOML literal string cannot hold: its quote and those control characters.
_NOT_LITERAL = re.compile(r"['\x00-\x08\x0a-\x1f\x7f]")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r"}

_TOP_KEYS = (
    "command_args",
    "working_dir",
    "scratch_paths",
    "inputs_dir",
    "outputs",
    "refscan_needles",
    "environment_vars",
    "constraints",
    "inputs",
    "additional_files",
)
_CONSTRAINT_KEYS = (
    "system",
    "min_memory",
    "available_ro_paths",
    "network_access",
    "provide_bin_sh",
)
# Each kind of input and the keys it takes besides its kind.
_INPUT_KINDS = {
    "directory": ("size",),
    "file": ("size", "executable"),
    "symlink": (),
    "path": (),
}


@dataclass(frozen=True)
class HostImport:
    """An input given as a host path: the caller ingests it and adds it as input ``name``."""

    name: str
    path: Path


def parse_request_toml(text: str, base: Path) -> tuple[Any, tuple[HostImport, ...]]:
    """The message and the host paths to import, relative ones taken against ``base``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"not valid TOML: {exc}") from exc
    _check_keys(document, "", _TOP_KEYS)
    message = snix_build.BuildRequest(
        command_args=_strings(document, "command_args"),
        working_dir=_string(document, "working_dir"),
        scratch_paths=_strings(document, "scratch_paths"),
        inputs_dir=_string(document, "inputs_dir"),
        outputs=_strings(document, "outputs"),
        refscan_needles=_strings(document, "refscan_needles"),
    )
    environment = _table(document, "environment_vars")
    for key in sorted(environment):
        value = _bytes(environment[key], f"environment_vars.{_key(key)}")
        message.environment_vars.add(key=key, value=value)

    if "constraints" in document:
        # Only when given: an absent table is an absent message, as in protobuf JSON.
        constraints = _table(document, "constraints")
        _check_keys(constraints, "constraints.", _CONSTRAINT_KEYS)
        message.constraints.SetInParent()
        message.constraints.system = _string(constraints, "system", "constraints.")
        message.constraints.min_memory = _uint64(constraints, "min_memory", "constraints.")
        message.constraints.available_ro_paths.extend(
            _strings(constraints, "available_ro_paths", "constraints.")
        )
        message.constraints.network_access = _bool(constraints, "network_access", "constraints.")
        message.constraints.provide_bin_sh = _bool(constraints, "provide_bin_sh", "constraints.")

    imports = []
    inputs = _table(document, "inputs")
    for name in sorted(inputs, key=lambda n: n.encode()):
        host = _input(message, name, inputs[name], f"inputs.{_key(name)}", base)
        if host is not None:
            imports.append(host)

    files = _table(document, "additional_files")
    for path, contents in files.items():
        where = f"additional_files.{_key(path)}"
        message.additional_files.add(path=path, contents=_bytes(contents, where))
    return message, tuple(imports)


def _input(message: Any, name: str, spec: Any, where: str, base: Path) -> HostImport | None:
    if not isinstance(spec, dict):
        raise InvalidArgumentError(f'{where}: expected a table such as {{ path = "..." }}')
    kinds = [kind for kind in _INPUT_KINDS if kind in spec]
    if len(kinds) != 1:
        raise InvalidArgumentError(
            f"{where}: give exactly one of {', '.join(_INPUT_KINDS)}, not {len(kinds)}"
        )
    (kind,) = kinds
    _check_keys(spec, f"{where}.", (kind, *_INPUT_KINDS[kind]))
    if kind == "path":
        text = _string(spec, "path", f"{where}.")
        if not text:
            raise InvalidArgumentError(f"{where}.path: empty")
        path = base / text
        if not os.path.lexists(path):
            raise InvalidArgumentError(f"{where}.path: {path} does not exist")
        return HostImport(name, path)
    raw_name = name.encode()
    node = message.inputs.add()
    if kind == "symlink":
        node.symlink.name = raw_name
        node.symlink.target = _bytes(spec["symlink"], f"{where}.symlink")
        return None
    digest = _digest(spec, kind, f"{where}.")
    if "size" not in spec:
        raise InvalidArgumentError(f"{where}.size: missing; give the size printed with the digest")
    size = _uint64(spec, "size", f"{where}.")
    if kind == "directory":
        node.directory.name = raw_name
        node.directory.digest = digest
        node.directory.size = size
    else:
        node.file.name = raw_name
        node.file.digest = digest
        node.file.size = size
        node.file.executable = _bool(spec, "executable", f"{where}.")
    return None


def _key(key: str) -> str:
    """A key as TOML would need it written, so an error names it the way the file does."""
    return key if _BARE_KEY.fullmatch(key) else _string_literal(key)


def _check_keys(table: dict[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise InvalidArgumentError(
                f"{prefix}{_key(key)}: unknown key; expected one of {', '.join(allowed)}"
            )


# Types by the names TOML gives them, which the person writing the file knows.
_TOML_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
    datetime.datetime: "a date-time",
    datetime.date: "a date",
    datetime.time: "a time",
}


def _type_error(where: str, expected: str, value: Any) -> InvalidArgumentError:
    return InvalidArgumentError(f"{where}: expected {expected}, got {_TOML_TYPES[type(value)]}")


def _string(table: dict[str, Any], key: str, prefix: str = "") -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise _type_error(prefix + key, "a string", value)
    return value


def _strings(table: dict[str, Any], key: str, prefix: str = "") -> list[str]:
    values = table.get(key, [])
    if not isinstance(values, list):
        raise _type_error(prefix + key, "an array of strings", values)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise _type_error(f"{prefix}{key}[{i}]", "a string", value)
    return values


def _bool(table: dict[str, Any], key: str, prefix: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise _type_error(prefix + key, "true or false", value)
    return value


def _uint64(table: dict[str, Any], key: str, prefix: str) -> int:
    value = table.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(prefix + key, "an integer", value)
    if not 0 <= value < UINT64_LIMIT:
        raise InvalidArgumentError(
            f"{prefix}{key}: {value} is out of range 0 to {UINT64_LIMIT - 1}"
        )
    return value


def _table(table: dict[str, Any], key: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _type_error(key, "a table", value)
    return value


def _digest(table: dict[str, Any], key: str, prefix: str) -> bytes:
    text = _string(table, key, prefix)
    try:
        return bytes(Digest.parse(text))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{prefix}{key}: {exc}") from exc


def _bytes(value: Any, where: str) -> bytes:
    """Text stands for its UTF-8 encoding, so other bytes need an explicit escape table."""
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, dict):
        raise _type_error(where, 'a string, { base64 = "..." } or { hex = "..." }', value)
    if len(value) != 1 or not value.keys() <= {"base64", "hex"}:
        raise InvalidArgumentError(
            f"{where}: a bytes escape takes exactly one key, base64 or hex; got "
            f"{', '.join(map(_key, value)) or 'none'}"
        )
    ((encoding, text),) = value.items()
    if not isinstance(text, str):
        raise _type_error(f"{where}.{encoding}", "a string", text)
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgumentError(f"{where}.{encoding}: not {encoding}: {exc}") from exc
    if base64.b64encode(raw).decode() != text:
        raise InvalidArgumentError(f"{where}.base64: not canonical base64 (standard, padded)")
    return raw


def render_request_toml(message: Any, imports: tuple[HostImport, ...] = ()) -> str:
    """The TOML form of ``message`` (either family) plus host paths to import, as written above.

    Default values are left out, as protobuf JSON leaves them out; reading the
    text back gives the same message and imports.
    """
    return "".join(_render_lines(message, imports))


def _render_lines(message: Any, imports: tuple[HostImport, ...]) -> Iterator[str]:
    for key in ("command_args", "working_dir", "scratch_paths", "inputs_dir", "outputs"):
        yield from _assignment(key, getattr(message, key))
    yield from _assignment("refscan_needles", message.refscan_needles)

    if message.environment_vars:
        yield "\n[environment_vars]\n"
        for var in message.environment_vars:
            yield f"{_key(var.key)} = {_bytes_value(var.value)}\n"

    if message.HasField("constraints"):
        yield "\n[constraints]\n"
        for key in _CONSTRAINT_KEYS:
            yield from _assignment(key, getattr(message.constraints, key))

    entries = [_input_entry(node, i) for i, node in enumerate(message.inputs)]
    entries += [(host.name, f"{{ path = {_string_literal(str(host.path))} }}") for host in imports]
    if entries:
        yield "\n[inputs]\n"
        for name, value in sorted(entries, key=lambda entry: entry[0].encode()):
            yield f"{_key(name)} = {value}\n"

    if message.additional_files:
        yield "\n[additional_files]\n"
        for extra in message.additional_files:
            yield f"{_key(extra.path)} = {_bytes_value(extra.contents)}\n"


def _input_entry(node: Any, index: int) -> tuple[str, str]:
    """An input's name and its inline table."""
    kind = node.WhichOneof(node.DESCRIPTOR.oneofs[0].name)
    if kind is None:
        raise InvalidArgumentError(f"inputs[{index}]: no directory, file or symlink")
    entry = getattr(node, kind)
    try:
        name = entry.name.decode()
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(
            f"inputs[{index}]: name {entry.name!r} is not UTF-8, which TOML keys must be; "
            "keep this request in protobuf JSON or text format"
        ) from exc
    if kind == "symlink":
        return name, f"{{ symlink = {_bytes_value(entry.target)} }}"
    digest = Digest.from_field(entry.digest, f"inputs[{index}].{kind}.digest")
    parts = [f'{kind} = "{digest}"', f"size = {entry.size}"]
    if kind == "file" and entry.executable:
        parts.append("executable = true")
    return name, "{ " + ", ".join(parts) + " }"


def _assignment(key: str, value: Any) -> Iterator[str]:
    """``key = value`` for a string, integer, bool or list of strings; nothing for a default."""
    if not value:
        return
    if isinstance(value, bool):
        yield f"{key} = true\n"
    elif isinstance(value, int):
        yield f"{key} = {value}\n"
    elif isinstance(value, str):
        yield f"{key} = {_string_literal(value)}\n"
    else:
        items = [_string_literal(item) for item in value]
        one_line = f"{key} = [{', '.join(items)}]"
        if len(one_line) <= 100:
            yield one_line + "\n"
        else:
            yield f"{key} = [\n" + "".join(f"  {item},\n" for item in items) + "]\n"


def _bytes_value(value: bytes) -> str:
    try:
        return _string_literal(value.decode())
    except UnicodeDecodeError:
        return f'{{ base64 = "{base64.b64encode(value).decode()}" }}'


def _string_literal(text: str) -> str:
    """A basic string, or a literal one where that spares escaping quotes and backslashes."""
    if _NEEDS_ESCAPE.search(text) and not _NOT_LITERAL.search(text):
        return f"'{text}'"

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'

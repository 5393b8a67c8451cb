"""Reading a BuildRequest from a file, in whichever encoding it was saved.

The file's extension alone says which encoding it is in, and every reader is
strict, so a file is never read as another form than its author meant: a
request in the wrong form fails to parse rather than meaning something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from builder.errors import InvalidArgumentError
from builder.executor.request_toml import HostImport, parse_request_toml, render_request_toml
from builder.executor.strict_parsing import parse_json_strictly, parse_text_strictly
from builder.proto.snix.build.protos import build_pb2 as snix_build

TOML_SUFFIXES = (".toml",)
JSON_SUFFIXES = (".json",)
TEXT_SUFFIXES = (".txtpb", ".textproto", ".txt")
BINARY_SUFFIXES = (".pb", ".binpb")

MAX_REQUEST_FILE_SIZE = 64 << 20
"""Bytes: the largest message a server takes, so a larger request could not be sent anyway."""


@dataclass(frozen=True)
class RequestFile:
    """A request message and the host paths its file names as inputs (TOML only)."""

    message: Any
    imports: tuple[HostImport, ...] = ()


def _read(path: Path) -> bytes:
    """The file's bytes, refused past the limit rather than read until memory runs out."""
    with path.open("rb") as file:
        data = file.read(MAX_REQUEST_FILE_SIZE + 1)
    if len(data) > MAX_REQUEST_FILE_SIZE:
        raise InvalidArgumentError(
            f"larger than the limit of {MAX_REQUEST_FILE_SIZE >> 20} MiB for a request file"
        )
    return data


def load_request_file(path: Path) -> RequestFile:
    """TOML (.toml), protobuf JSON (.json), text format (.txtpb) or binary (.pb).

    The two families share field names and numbers, so one message type reads
    files written for either.
    """
    message = snix_build.BuildRequest()
    try:
        if path.suffix in TOML_SUFFIXES:
            # Absolute, so that the paths still hold when the request is shown elsewhere.
            return RequestFile(*parse_request_toml(_read(path).decode(), path.parent.absolute()))
        if path.suffix in JSON_SUFFIXES:
            parse_json_strictly(_read(path).decode(), message)
        elif path.suffix in TEXT_SUFFIXES:
            parse_text_strictly(_read(path).decode(), message)
        elif path.suffix in BINARY_SUFFIXES:
            message.ParseFromString(_read(path))
        else:
            raise InvalidArgumentError("unknown request format; use .toml, .json, .txtpb or .pb")
    except OSError as exc:
        raise InvalidArgumentError(f"{path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{path}: not UTF-8 text: {exc}") from exc
    except (
        json_format.ParseError,
        text_format.ParseError,
        DecodeError,
        InvalidArgumentError,
    ) as exc:
        raise InvalidArgumentError(f"{path}: {exc}") from exc
    return RequestFile(message)


def render_request_file(loaded: RequestFile, form: str) -> str:
    """The request as toml, json or txtpb; the protobuf forms cannot carry host paths."""
    if form == "toml":
        return render_request_toml(loaded.message, loaded.imports)
    if loaded.imports:
        name = loaded.imports[0].name
        raise InvalidArgumentError(
            f"inputs.{name}: a host path to import has no {form} form; import it first "
            "(builder castore import) and give the printed digest and size instead"
        )
    if form == "json":
        return json_format.MessageToJson(loaded.message, indent=2) + "\n"
    return text_format.MessageToString(loaded.message, as_utf8=True)

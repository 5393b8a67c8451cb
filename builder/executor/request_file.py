"""Reading a BuildRequest from a file, in whichever encoding it was saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from builder.errors import InvalidArgumentError
from builder.proto.snix.build.protos import build_pb2 as snix_build


def load_request_message(path: Path) -> Any:
    """Protobuf JSON (.json), text format (.txtpb) or binary (.pb).

    The two families share field names and numbers, so one message type reads
    files written for either.
    """
    message = snix_build.BuildRequest()
    try:
        if path.suffix == ".json":
            json_format.Parse(path.read_text(), message)
        elif path.suffix in (".txtpb", ".textproto", ".txt"):
            text_format.Parse(path.read_text(), message)
        elif path.suffix in (".pb", ".binpb"):
            message.ParseFromString(path.read_bytes())
        else:
            raise InvalidArgumentError(f"{path}: unknown request format; use .json, .txtpb or .pb")
    except (json_format.ParseError, text_format.ParseError, DecodeError) as exc:
        raise InvalidArgumentError(f"{path}: {exc}") from exc
    return message

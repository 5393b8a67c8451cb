"""Protobuf JSON and text format read without their lenient paths.

Both parsers of the protobuf library accept input that a person did not mean:
JSON's ``bytes`` decoder skips every character outside the base64 alphabet,
so ``"/nix/store/...-out"`` becomes a few bytes of garbage, and text format
keeps an unknown escape such as ``\\q`` as two characters where protobuf's own
parser refuses it. A build given such a value fails much later for a reason
that no longer points at the request, so these readers refuse it up front,
naming where it is.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from builder.errors import InvalidArgumentError

FRIENDLY_FORM = (
    "write the request as TOML (.toml) to give plain text; see 'Writing a request' in the README"
)

_TO_STANDARD_ALPHABET = str.maketrans("-_", "+/")
_TO_URLSAFE_ALPHABET = str.maketrans("+/", "-_")


def is_canonical_base64(text: str) -> bool:
    """Whether ``text`` is exactly what encoding its bytes gives, as protobuf JSON allows it.

    That is the standard or the URL-safe alphabet, with or without padding; a
    text that decodes but is not the encoding of what it decodes to (stray
    characters, mixed alphabets, non-zero trailing bits) was not written as
    base64.
    """
    padded = text.translate(_TO_STANDARD_ALPHABET) + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return False
    standard = base64.b64encode(raw).decode()
    urlsafe = standard.translate(_TO_URLSAFE_ALPHABET)
    return text in (standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("="))


def parse_json_strictly(text: str, message: Any) -> None:
    """Parse protobuf JSON into ``message``, refusing a bytes field that is not base64
    and a field given under both its names (``commandArgs`` and ``command_args``),
    of which protobuf would keep the last without a word."""
    json_format.Parse(text, message)
    # The protobuf parser has checked the shape against the message type, so
    # the walk below meets only the objects and lists the type allows.
    _check_fields(json.loads(text), message.DESCRIPTOR)


def _check_fields(document: dict[str, Any], descriptor: Descriptor) -> None:
    pending: list[tuple[dict[str, Any], Descriptor, str]] = [(document, descriptor, "")]
    while pending:
        obj, desc, prefix = pending.pop()
        keys: dict[str, str] = {}
        for key, value in obj.items():
            field = desc.fields_by_camelcase_name.get(key) or desc.fields_by_name[key]
            where = f"{prefix}{key}"
            other = keys.setdefault(field.name, key)
            if other != key:
                raise InvalidArgumentError(
                    f"{where}: the field is also given as {other!r}; give it once"
                )
            if value is None:
                continue
            values = list(enumerate(value)) if field.is_repeated else [(None, value)]
            for index, item in values:
                at = where if index is None else f"{where}[{index}]"
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    pending.append((item, field.message_type, f"{at}."))
                elif field.type == FieldDescriptor.TYPE_BYTES and not is_canonical_base64(item):
                    shown = item if len(item) <= 60 else item[:57] + "..."
                    raise InvalidArgumentError(
                        f"{at}: {shown!r} is not base64: protobuf JSON takes bytes fields as "
                        f"base64 and would have decoded this to other bytes; {FRIENDLY_FORM}"
                    )


# The escapes protobuf's text format defines; anything else after a backslash
# is an error in protobuf's own parser.
_ESCAPE = re.compile(
    r"\\(?:[abfnrtv\\'\"?]|[0-7]{1,3}|x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})"
)


def parse_text_strictly(text: str, message: Any) -> None:
    """Parse text format into ``message``, refusing escapes protobuf does not define."""
    tokenizer = text_format.Tokenizer(text.splitlines())
    field = "(top)"
    while not tokenizer.AtEnd():
        token = tokenizer.token
        if token[:1] in ("'", '"'):
            problem = _escape_problem(token)
            if problem:
                # The tokenizer's own error carries the line and column.
                raise InvalidArgumentError(str(tokenizer.ParseError(f"{field}: {problem}")))
        elif token[:1].isalpha() or token[:1] == "_":
            field = token
        tokenizer.NextToken()
    text_format.Parse(text, message)


def _escape_problem(literal: str) -> str | None:
    body = literal[1:-1]
    position = body.find("\\")
    while position != -1:
        match = _ESCAPE.match(body, position)
        if match is None:
            escape = body[position : position + 2]
            return (
                f"unknown escape {escape!r} in a string; text format takes \\\\ for a "
                'backslash, \\n, \\t, \\", \\xHH, \\ooo, \\uHHHH'
            )
        position = body.find("\\", match.end())
    return None

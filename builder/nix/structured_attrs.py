"""The two files a ``__structuredAttrs`` build reads its attributes from.

Nix renders ``.attrs.json`` from the derivation's ``__json`` with ``outputs``
replaced by a map from output name to path, compact and with sorted keys, and
``.attrs.sh`` as bash ``declare`` lines for every attribute with a
shell-compatible name whose value is simple (string, integral number, boolean,
null) or a list or map of simple values; other attributes are left out. Both
are reproduced byte for byte, since builders copy them into outputs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def attrs_json(attrs: dict[str, Any], outputs: dict[str, str]) -> bytes:
    rendered = {**attrs, "outputs": dict(outputs)}
    return json.dumps(rendered, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "utf-8", "surrogateescape"
    )


def attrs_sh(attrs: dict[str, Any], outputs: dict[str, str]) -> bytes:
    lines = []
    for key, value in sorted({**attrs, "outputs": dict(outputs)}.items()):
        if not _SHELL_NAME.fullmatch(key):
            continue
        simple = _simple(value)
        if simple is not None:
            lines.append(f"declare {key}={simple}\n")
        elif isinstance(value, list):
            items = [_simple(v) for v in value]
            if all(i is not None for i in items):
                lines.append(f"declare -a {key}=({''.join(f'{i} ' for i in items)})\n")
        elif isinstance(value, dict):
            pairs = [(k, _simple(v)) for k, v in sorted(value.items())]
            if all(v is not None for _, v in pairs):
                body = "".join(f"[{_quote(k)}]={v} " for k, v in pairs)
                lines.append(f"declare -A {key}=({body})\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def _simple(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    if value is None:
        return "''"
    return None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"

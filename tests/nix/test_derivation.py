"""Parsing .drv files: escapes, non-ASCII and non-UTF-8 text, and malformed input."""

from __future__ import annotations

import pytest

from builder.errors import InvalidArgumentError
from builder.nix.derivation import parse_derivation
from builder.nix.structured_attrs import attrs_sh
from builder.nix.to_request import derivation_to_request, pass_as_file_name
from builder.store.store_path import StorePath

OUT = "/nix/store/6lbdqv5q427139s151yq2hnmfhi2rcr7-pass-as-file"
DEP = "/nix/store/l21q2fxzr56a48a35zsmyxc6pij4zrbm-dep.drv"
SRC = "/nix/store/8hzbz17vcmw97w1wpqpadxhfkj7crcps-busybox"


def _drv(env: str = '("out","' + OUT + '")', outputs: str = "") -> bytes:
    outputs = outputs or f'("out","{OUT}","","")'
    return (
        f'Derive([{outputs}],[("{DEP}",["dev","out"])],["{SRC}"],"x86_64-linux",'
        f'"{SRC}/busybox",["sh","-c","echo \\"hi\\""],[{env}])'
    ).encode()


def test_fields_and_escapes() -> None:
    env = '("esc","q\\" b\\\\ n\\n r\\r t\\t"),("out","' + OUT + '")'
    drv = parse_derivation(_drv(env))
    assert drv.outputs[0].path == StorePath.parse(OUT)
    assert drv.input_derivations == ((StorePath.parse(DEP), ("dev", "out")),)
    assert drv.input_sources == (StorePath.parse(SRC),)
    assert drv.args == ("sh", "-c", 'echo "hi"')
    assert drv.environment["esc"] == 'q" b\\ n\n r\r t\t'
    assert not drv.is_fixed_output


def test_non_ascii_and_non_utf8() -> None:
    env = '("grüße","☃ 日本語"),("out","' + OUT + '")'
    drv = parse_derivation(_drv(env))
    assert drv.environment["grüße"] == "☃ 日本語"
    raw = _drv('("bytes","\xff"),("out","' + OUT + '")').replace("ÿ".encode(), b"\xff")
    request = derivation_to_request(parse_derivation(raw), [], 1).request
    assert dict(request.environment)["bytes"] == b"\xff"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"Derive(", "outputs: expected '['"),
        (b"derive([],", "header"),
        (_drv()[:-1], "env: expected ')'"),
        (_drv() + b" ", "trailing characters"),
        (b'Derive([("out","/nix/sto', "unterminated string"),
        (_drv(outputs='("out","/tmp/x","","")'), "outputs[0].path"),
        (_drv(outputs=f'("out","{OUT}","sha256","")'), "hashAlgo and hash"),
        (_drv('("a","1"),("a","2")'), "'a' appears twice"),
        (_drv().replace(SRC.encode() + b'"]', b'/nix/store/short"]'), "inputSrcs[0]"),
    ],
)
def test_malformed(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"at offset|appears twice") as caught:
        parse_derivation(data, "bad.drv")
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("bad.drv")


def test_pass_as_file_name_as_nix_computes_it() -> None:
    assert pass_as_file_name("text") == ".attr-1lf969yddshzhld7sr1vbagr07bnygg99lgl6gk5kxcnp4z9wbcq"


def test_attrs_sh_leaves_out_what_bash_cannot_hold() -> None:
    rendered = attrs_sh(
        {"f": 1.5, "g": 2.0, "nested": {"a": [1]}, "bad-name": "x", "mixed": ["a", {}]}, {}
    )
    assert rendered == b"declare g=2\ndeclare -A outputs=()\n"

"""``builder-nix-serve --config``: the server's TLS material and token, read from a TOML file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from builder.errors import InvalidArgumentError
from builder.nixserve.remote_backend import security_settings


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "tls").mkdir(parents=True)
    (conf / "token").write_text("secret\n")
    (conf / "tls" / "ca.pem").write_bytes(b"CA")
    absolute = tmp_path / "elsewhere-token"
    absolute.write_text("other\n")
    config = conf / "serve.toml"
    config.write_text('token_file = "token"\ntls_ca = "tls/ca.pem"\n')
    security = security_settings(config, {})
    assert (security.token, security.root_certificates) == ("secret", b"CA")
    config.write_text(f'token_file = "{absolute}"\n')
    assert security_settings(config, {}).token == "other"


def test_environment_paths_stay_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("from-env\n")
    monkeypatch.chdir(tmp_path)
    assert security_settings(None, {"BUILDER_TOKEN_FILE": "token"}).token == "from-env"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('token-file = "t"\n', "unknown settings token-file"),
        ("token_file = 3\n", "token_file must be a file name"),
        ('token_file = "absent"\n', "token_file .*absent: No such file"),
    ],
)
def test_mistakes_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(text)
    with pytest.raises(InvalidArgumentError, match=f"--config {re.escape(str(config))}: {message}"):
        security_settings(config, {})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'token_file = "\xff"\n', "not UTF-8 text"),
        (b"token_file = \n", "not valid TOML"),
        (b"# " + b"x" * (1 << 20) + b"\n", "larger than the limit of 1 MiB"),
    ],
)
def test_a_file_that_is_no_settings_table_is_refused_naming_it(
    tmp_path: Path, data: bytes, message: str
) -> None:
    """Read as ``builder serve --config`` reads its file: bounded, UTF-8, TOML."""
    config = tmp_path / "serve.toml"
    config.write_bytes(data)
    with pytest.raises(InvalidArgumentError, match=f"--config {re.escape(str(config))}: {message}"):
        security_settings(config, {})

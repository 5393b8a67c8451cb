"""``--config FILE.toml`` of ``builder serve`` and ``builder castore serve`` against their flags."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli import build_parser
from builder.config_file import config_keys, parse_args
from builder.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "serve.toml"
LISTEN = "grpc+unix:///run/example.sock"


def _serve_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return commands.choices["serve"]


def _config(tmp_path: Path, text: str, name: str = "serve.toml") -> Path:
    path = tmp_path / "conf" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _serve(config: Path, *flags: str) -> argparse.Namespace:
    return parse_args(build_parser(), ["serve", "--config", str(config), *flags])


def test_file_fills_flags_not_given(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        f'listen = ["{LISTEN}"]\njobs = 3\nqueue = 7\ntimeout = 90\nshutdown_grace = 5\n',
    )
    args = _serve(config)
    assert args.listen == [LISTEN]
    assert (args.jobs, args.queue, args.timeout, args.shutdown_grace) == (3, 7, 90.0, 5.0)
    assert isinstance(args.timeout, float)
    # What the file does not name keeps its default.
    assert args.log_retention == 3600.0


def test_command_line_wins_even_with_the_default_value(tmp_path: Path) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\njobs = 3\nqueue = 7\n')
    args = _serve(config, "--jobs", "5", "--queue", "64")
    assert (args.jobs, args.queue) == (5, 64)


def test_repeatable_flags_take_arrays_and_the_command_line_replaces_them(
    tmp_path: Path,
) -> None:
    config = _config(
        tmp_path, f'listen = ["{LISTEN}", "grpc+http://[::1]:0"]\nsystem = ["a", "b"]\n'
    )
    args = _serve(config)
    assert args.listen == [LISTEN, "grpc+http://[::1]:0"]
    assert args.system == ["a", "b"]
    args = _serve(config, "--system", "c")
    assert args.system == ["c"]
    with pytest.raises(InvalidArgumentError, match=r"serve\.toml: system is repeatable"):
        _serve(_config(tmp_path, f'listen = ["{LISTEN}"]\nsystem = "a"\n'))


def test_switches_take_booleans(tmp_path: Path) -> None:
    on = _config(tmp_path, f'listen = ["{LISTEN}"]\nallow_network = true\nno_result_cache = true\n')
    args = _serve(on)
    assert args.allow_network is True
    assert args.no_result_cache is True
    off = _config(tmp_path, f'listen = ["{LISTEN}"]\nallow_network = false\n', "off.toml")
    assert _serve(off).allow_network is False
    # A switch given on the command line is on whatever the file says.
    assert _serve(off, "--allow-network").allow_network is True
    wrong = _config(tmp_path, f'listen = ["{LISTEN}"]\nallow_network = "yes"\n', "wrong.toml")
    with pytest.raises(InvalidArgumentError, match=r"wrong\.toml: allow_network must be true or"):
        _serve(wrong)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('jobs = "many"', r"jobs = 'many': .*int"),
        ("jobs = 2.5", r"jobs = 2\.5"),
        ("jobs = true", "jobs must be a string or a number"),
        ("timeout = [1]", "timeout must be a string or a number, not an array"),
        ("shell = 5", "shell must be a string, not int 5"),
        ("shutdown_grace = -1", "shutdown_grace = -1: '-1' is not a number of seconds"),
        ("data_dir = { path = 'x' }", "data_dir must be a string or a number, not a table"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_and_the_key(
    tmp_path: Path, line: str, message: str
) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\n{line}\n')
    with pytest.raises(InvalidArgumentError, match=f"--config {re.escape(str(config))}: {message}"):
        _serve(config)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "jbos = 3",
            r"unknown key 'jbos': builder serve has no flag --jbos; did you mean 'jobs'\?",
        ),
        (
            "max-directory-entries = 3",
            "key 'max-directory-entries' is spelled 'max_directory_entries'",
        ),
        ('config = "other.toml"', "unknown key 'config'"),
        ("help = true", "unknown key 'help'"),
        ("[tls]\ncert = 'x'", "unknown key 'tls'"),
    ],
)
def test_an_unknown_key_names_the_file_and_the_key(tmp_path: Path, line: str, message: str) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\n{line}\n')
    with pytest.raises(InvalidArgumentError, match=f"--config {re.escape(str(config))}: {message}"):
        _serve(config)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        f'listen = ["{LISTEN}"]\ntoken_file = "secret/token"\nstore = "store.toml"\n'
        'work_dir = "/abs/work"\n',
    )
    args = _serve(config)
    assert args.token_file == tmp_path / "conf" / "secret" / "token"
    assert args.store == tmp_path / "conf" / "store.toml"
    assert args.work_dir == Path("/abs/work")
    # On the command line a relative path stays relative to where the command runs.
    assert _serve(config, "--token-file", "t").token_file == Path("t")


def test_a_store_url_in_the_file_stays_a_url(tmp_path: Path) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\nstore = "fs:///var/lib/x"\n')
    assert _serve(config).store == "fs:///var/lib/x"


def test_unreadable_or_malformed_files_are_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"absent\.toml: No such file"):
        _serve(tmp_path / "absent.toml")
    with pytest.raises(InvalidArgumentError, match=r"bad\.toml: not valid TOML"):
        _serve(_config(tmp_path, "listen = [", "bad.toml"))


def test_castore_serve_reads_its_own_flags_only(tmp_path: Path) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\nshutdown_grace = 2\nstore = "memory://"\n')
    args = parse_args(build_parser(), ["castore", "serve", "--config", str(config)])
    assert (args.listen, args.shutdown_grace, args.store) == ([LISTEN], 2.0, "memory://")
    jobs = _config(tmp_path, f'listen = ["{LISTEN}"]\njobs = 2\n', "jobs.toml")
    with pytest.raises(InvalidArgumentError, match="builder castore serve has no flag --jobs"):
        parse_args(build_parser(), ["castore", "serve", "--config", str(jobs)])


def _builder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args], capture_output=True, text=True, timeout=60
    )


def test_a_required_flag_may_come_from_the_file_but_not_from_nowhere(tmp_path: Path) -> None:
    config = _config(tmp_path, "jobs = 1\n")
    assert _serve(_config(tmp_path, f'listen = ["{LISTEN}"]\n', "ok.toml")).listen == [LISTEN]
    done = _builder("serve", "--config", str(config))
    assert done.returncode == 2
    assert "the following arguments are required: --listen" in done.stderr
    done = _builder("serve")
    assert done.returncode == 2
    assert "the following arguments are required: --listen" in done.stderr


def test_the_command_reports_a_bad_file_naming_it(tmp_path: Path) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\njobs = "x"\n')
    done = _builder("serve", "--config", str(config))
    assert done.returncode != 0
    assert f"--config {config}: jobs = 'x'" in done.stderr


_EXAMPLE_KEY = re.compile(r"^#? ?([a-z_]+) = ", re.MULTILINE)


def test_the_example_names_every_flag_of_serve_and_every_line_of_it_loads(
    tmp_path: Path,
) -> None:
    text = EXAMPLE.read_text()
    listed = _EXAMPLE_KEY.findall(text)
    assert sorted(listed) == sorted(config_keys(_serve_parser())), (
        "examples/serve.toml must show each key of builder serve once"
    )
    # As written, and with every commented setting switched on.
    args = _serve(EXAMPLE)
    assert args.listen == ["grpc+unix:///run/builder.sock"]
    uncommented = re.sub(r"^# ([a-z_]+ = )", r"\1", text, flags=re.MULTILINE)
    args = _serve(_config(tmp_path, uncommented))
    assert args.store == tmp_path / "conf" / "store.toml"
    assert args.tls_cert == tmp_path / "conf" / "tls" / "server.pem"
    assert args.jobs == 4
    assert args.allow_network is False


def test_an_abbreviated_config_flag_is_read_too(tmp_path: Path) -> None:
    config = _config(tmp_path, f'listen = ["{LISTEN}"]\n')
    args = parse_args(build_parser(), ["serve", "--conf", str(config)])
    assert args.listen == [LISTEN]
    args = parse_args(build_parser(), ["serve", f"--config={config}"])
    assert args.listen == [LISTEN]


def test_help_shows_required_flags_as_required() -> None:
    done = _builder("serve", "--help")
    assert done.returncode == 0
    assert "[-h] --listen LISTEN" in done.stdout


def test_a_config_file_without_end_is_refused_at_the_limit(tmp_path: Path) -> None:
    """A --config naming /dev/zero is not read until memory runs out."""
    endless = tmp_path / "serve.toml"
    endless.symlink_to("/dev/zero")
    with pytest.raises(InvalidArgumentError, match=r"serve\.toml: larger than the limit of 1 MiB"):
        _serve(endless)


def test_a_config_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    """It once ended the command with a UnicodeDecodeError traceback."""
    config = tmp_path / "serve.toml"
    config.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidArgumentError, match=r"serve\.toml: not UTF-8 text"):
        _serve(config)

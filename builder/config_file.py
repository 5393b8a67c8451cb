"""Settings for a command from a TOML file whose keys mirror the command's own flags.

A long-running command such as ``builder serve`` collects many flags; an
operator keeps them in one file instead (``--config FILE.toml``). The keys are
derived from the argparse parser rather than listed here, so a flag added to
the command is a key of its file at once, read and checked exactly as on the
command line:

- the key is the flag's long name without its dashes, in snake_case
  (``--max-directory-entries`` is ``max_directory_entries``); the kebab-case
  spelling is refused, so a key can only be written one way and a typo never
  passes for another spelling;
- a value goes through the flag's own ``type=`` and ``choices``; a string is
  taken as its command-line text, and an integer or float as TOML writes it
  (a flag without a type takes strings only);
- an on/off flag (``--allow-network``) takes a boolean, a repeatable one
  (``--listen``) an array;
- a value the flag's type turns into a relative path is relative to the
  directory holding the file, not to wherever the command is started;
- a flag given on the command line wins over the file.

An unknown key or a value of the wrong kind is an ``InvalidArgumentError``
naming the file and the key.

argparse offers no public view of a parser's flags, so their actions are
read through ``_actions`` and told apart by their (long stable) classes.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

from builder.errors import InvalidArgumentError

CONFIG_DEST = "config"
MAX_CONFIG_FILE_SIZE = 1 << 20
"""Bytes: far more than every flag takes, and a bound on what a wrong path makes us read."""
# The subparser that took ``--config``, recorded as a default of the namespace
# so the file is read against that command's flags.
_PARSER_DEST = "_config_file_parser"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--config FILE.toml`` whose keys are its other long flags."""
    parser.add_argument(
        "--config",
        dest=CONFIG_DEST,
        type=Path,
        metavar="FILE.toml",
        help="read settings from this TOML file: each key is a flag's long name in "
        "snake_case (--max-directory-entries is max_directory_entries), relative paths "
        "are relative to the file's directory, and flags given here win "
        "(default: no file)",
    )
    parser.set_defaults(**{_PARSER_DEST: parser})


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` like ``parser.parse_args``, then fill flags not given from ``--config``.

    A required flag may come from the file, so with ``--config`` on the line
    required flags are checked only once the file has been read (with
    argparse's usage message and exit status); without it argparse checks
    them, and its help shows them as required.
    """
    line = sys.argv[1:] if argv is None else list(argv)
    relax = any(_names_config(arg) for arg in line)
    with _required_relaxed(parser) if relax else contextlib.nullcontext():
        args = parser.parse_args(line)
    command: argparse.ArgumentParser | None = getattr(args, _PARSER_DEST, None)
    if command is None:
        return args
    delattr(args, _PARSER_DEST)
    path: Path | None = getattr(args, CONFIG_DEST)
    if path is not None:
        given = _given_on_command_line(parser, command, line)
        for dest, value in read_config_file(command, path).items():
            if dest not in given:
                setattr(args, dest, value)
    missing = [
        "/".join(action.option_strings)
        for action in command._actions
        if action.required and getattr(args, action.dest, None) in (None, [])
    ]
    if missing:
        command.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def _names_config(arg: str) -> bool:
    """Whether ``arg`` is ``--config`` or an abbreviation argparse would take for it."""
    name = arg.partition("=")[0]
    return len(name) > 2 and "--config".startswith(name)


def config_key(action: argparse.Action) -> str | None:
    """The file key of a flag: its first long name in snake_case; None for positionals."""
    for option in action.option_strings:
        if option.startswith("--"):
            return option[2:].replace("-", "_")
    return None


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a ``--config`` file of ``parser``'s command may hold, with its flag."""
    keys = {}
    for action in parser._actions:
        key = config_key(action)
        if key is None or action.dest in (CONFIG_DEST, argparse.SUPPRESS):
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        keys[key] = action
    return keys


def read_toml_file(path: Path) -> dict[str, Any]:
    """The table of a ``--config`` file, read within a size bound; every failure names the file."""
    try:
        with path.open("rb") as file:
            text = file.read(MAX_CONFIG_FILE_SIZE + 1)
        if len(text) > MAX_CONFIG_FILE_SIZE:
            raise InvalidArgumentError(
                f"--config {path}: larger than the limit of {MAX_CONFIG_FILE_SIZE >> 20} MiB"
            )
        return tomllib.loads(text.decode())
    except OSError as exc:
        raise InvalidArgumentError(f"--config {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"--config {path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"--config {path}: not valid TOML: {exc}") from exc


def read_config_file(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The settings of ``path`` for ``parser``'s command, by argparse destination."""
    settings = read_toml_file(path)
    keys = config_keys(parser)
    values = {}
    for key, value in settings.items():
        action = keys.get(key)
        if action is None:
            raise InvalidArgumentError(f"--config {path}: {_unknown(parser.prog, key, keys)}")
        values[action.dest] = _Setting(path, key, action).value(value)
    return values


def _unknown(command: str, key: str, keys: dict[str, argparse.Action]) -> str:
    snake = key.replace("-", "_")
    if snake in keys:
        return f"key {key!r} is spelled {snake!r} (keys are snake_case)"
    close = difflib.get_close_matches(snake, keys, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r}: {command} has no flag --{key.replace('_', '-')}{hint}"


class _Setting:
    """One key of a file, converted as its flag converts command-line text."""

    def __init__(self, path: Path, key: str, action: argparse.Action) -> None:
        self._path = path
        self._key = key
        self._action = action

    def _error(self, problem: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"--config {self._path}: {self._key} {problem}")

    def value(self, value: object) -> Any:
        action = self._action
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise self._error(f"must be true or false, not {_kind(value)}")
            return value
        if action.nargs == 0:
            # A switch: store_true, store_false, store_const and their kin.
            if not isinstance(value, bool):
                raise self._error(f"must be true or false, not {_kind(value)}")
            return action.const if value else action.default
        if isinstance(action, argparse._CountAction):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self._error(f"must be a count (an integer from 0), not {value!r}")
            return value
        appends = isinstance(action, argparse._AppendAction)
        if appends and action.nargs not in (None, "?"):
            raise self._error("cannot be set in a config file")
        if appends or isinstance(action, argparse._ExtendAction) or action.nargs in ("*", "+"):
            if not isinstance(value, list):
                raise self._error(f"is repeatable: give an array, not {_kind(value)}")
            return [self._scalar(item) for item in value]
        if action.nargs not in (None, "?"):
            raise self._error("cannot be set in a config file")
        return self._scalar(value)

    def _scalar(self, value: object) -> Any:
        convert = self._action.type
        if convert is None:
            if not isinstance(value, str):
                raise self._error(f"must be a string, not {_kind(value)}")
            converted: Any = value
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self._error(f"must be a string or a number, not {_kind(value)}")
        else:
            text = value if isinstance(value, str) else str(value)
            try:
                converted = convert(text)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                detail = str(exc) or f"not a valid {getattr(convert, '__name__', 'value')}"
                raise self._error(f"= {value!r}: {detail}") from exc
        choices = self._action.choices
        if choices is not None and converted not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise self._error(f"= {value!r}: must be one of {listed}")
        if isinstance(converted, PurePath) and not converted.is_absolute():
            return type(converted)(self._path.absolute().parent / converted)
        return converted


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str):
        return "a string"
    return f"{type(value).__name__} {value!r}"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subparser below it, without recursion on their nesting."""
    pending = [parser]
    while pending:
        current = pending.pop()
        yield current
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())


@contextlib.contextmanager
def _required_relaxed(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Required flags of commands with ``--config`` made optional while the line is parsed."""
    relaxed = [
        action
        for sub in _parsers(parser)
        if sub.get_default(_PARSER_DEST) is sub
        for action in sub._actions
        if action.required and action.option_strings
    ]
    for action in relaxed:
        action.required = False
    try:
        yield
    finally:
        for action in relaxed:
            action.required = True


@contextlib.contextmanager
def _defaults_suppressed(command: argparse.ArgumentParser) -> Iterator[None]:
    saved = {action: action.default for action in command._actions}
    for action in saved:
        action.default = argparse.SUPPRESS
    try:
        yield
    finally:
        for action, default in saved.items():
            action.default = default


def _given_on_command_line(
    parser: argparse.ArgumentParser,
    command: argparse.ArgumentParser,
    argv: Sequence[str] | None,
) -> set[str]:
    """The destinations of ``command``'s flags that ``argv`` sets itself.

    Parsing again with every default of the command suppressed leaves in the
    namespace only what the line gave, even a value equal to the default.
    """
    with _required_relaxed(parser), _defaults_suppressed(command):
        given = parser.parse_args(argv)
    return {action.dest for action in command._actions if hasattr(given, action.dest)}

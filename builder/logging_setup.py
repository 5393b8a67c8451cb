"""How the ``builder`` commands write their logs: one handler on the root logger, to stderr.

Every module logs through ``logging.getLogger(__name__)`` and puts what a line
is about in ``extra={...}``; structlog's ``ProcessorFormatter`` turns each
record into an event (timestamp, level, logger, message and those fields) and
renders it in one of three formats:

- ``text``: ``2026-01-02T03:04:05.678901Z INFO    builder.server.app: message key=value``,
  one line per record, for operators reading a server's log;
- ``json``: the same fields as one JSON object per line, for log collectors;
- ``plain``: ``builder: message key=value`` (with the level for warnings and
  errors), what one-shot commands print by default, since their user reads
  the terminal rather than a log.

gRPC's C core writes its own log to stderr, bypassing all of this; it reads
``GRPC_VERBOSITY`` once, when ``grpc`` is first imported, so the set-up has to
run before that import to keep it quiet.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import structlog

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json", "plain")

GRPC_VERBOSITY = "GRPC_VERBOSITY"
# What grpc 1.85 accepts to print nothing at all; ERROR still prints errors
# such as a port already in use, which our own messages report anyway.
GRPC_SILENT = "NONE"

_HANDLER_NAME = "builder"
# The event's own keys, rendered first and in this order; every other key is a field.
_HEAD = ("timestamp", "level", "logger", "message")
_PLAIN_PREFIX = "builder: "

EventDict = MutableMapping[str, Any]


def quiet_grpc_core(level: int) -> None:
    """Keep gRPC's C core silent below debug, unless the operator set its verbosity.

    Must run before ``grpc`` is imported: the core reads the variable then.
    """
    if level > logging.DEBUG:
        os.environ.setdefault(GRPC_VERBOSITY, GRPC_SILENT)


def configure_logging(level_name: str, log_format: str) -> None:
    """Route every record of ``level_name`` and above to stderr in ``log_format``.

    Calling it again replaces the handler it installed before and leaves any
    other handler of the root logger (a test's capture, say) in place.
    """
    level = LEVELS[level_name]
    quiet_grpc_core(level)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_formatter(log_format))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is written, not as it was at set-up:
    whoever runs commands in-process (tests) swaps it and closes the old one."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """``StreamHandler`` sets its stream once; this handler has none of its own."""


def _formatter(log_format: str) -> logging.Formatter:
    return _DeferredFormatter(log_format)


class _DeferredFormatter(logging.Formatter):
    """Builds structlog's formatter when the first record is written.

    Importing structlog (and the asyncio it imports) costs a process tens of
    milliseconds, which a one-shot command that logs nothing need not pay.
    A handler formats under its own lock, so one formatter is built at most.
    """

    def __init__(self, log_format: str) -> None:
        super().__init__()
        self._log_format = log_format
        self._inner: structlog.stdlib.ProcessorFormatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._inner is None:
            self._inner = _structlog_formatter(self._log_format)
        return self._inner.format(record)


def _structlog_formatter(log_format: str) -> structlog.stdlib.ProcessorFormatter:
    import structlog

    renderers = {"text": _render_text, "json": _render_json, "plain": _render_plain}
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _exception_of_record,
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _message_key,
            renderers[log_format],
        ],
    )


def _exception_of_record(logger: object, method: str, event: EventDict) -> EventDict:
    """A record's traceback becomes the event's, whichever structlog release copies it or not."""
    record = event.get("_record")
    if "exc_info" not in event and record is not None and record.exc_info:
        event["exc_info"] = record.exc_info
    return event


def _message_key(logger: object, method: str, event: EventDict) -> EventDict:
    """structlog calls the message ``event``; operators and collectors look for ``message``."""
    event["message"] = event.pop("event", "")
    return event


def _fields(event: Mapping[str, Any]) -> str:
    """``key=value`` for every field, in the order they were given; values quoted if needed."""
    parts = []
    for key, value in event.items():
        if key in _HEAD or key == "exception":
            continue
        parts.append(f"{key}={_text_value(value)}")
    return " ".join(parts)


def _text_value(value: object) -> str:
    """A value as it reads on the line; strings with spaces, quotes or ``=`` are JSON-quoted."""
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in '"=' for c in value)
        return value if plain else json.dumps(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, default=str)


def _with_exception(line: str, event: Mapping[str, Any]) -> str:
    exception = event.get("exception")
    return f"{line}\n{exception.rstrip()}" if exception else line


def _render_text(logger: object, method: str, event: EventDict) -> str:
    head = (
        f"{event.get('timestamp', '')} {event.get('level', '').upper():<7} "
        f"{event.get('logger', '')}: {event.get('message', '')}"
    )
    fields = _fields(event)
    return _with_exception(f"{head} {fields}" if fields else head, event)


def _render_json(logger: object, method: str, event: EventDict) -> str:
    ordered = {key: event[key] for key in _HEAD if key in event}
    ordered.update((key, value) for key, value in event.items() if key not in ordered)
    return json.dumps(ordered, default=str)


def _render_plain(logger: object, method: str, event: EventDict) -> str:
    level = event.get("level", "info")
    prefix = _PLAIN_PREFIX if level == "info" else f"{_PLAIN_PREFIX}{level}: "
    fields = _fields(event)
    message = event.get("message", "")
    return _with_exception(f"{prefix}{message} {fields}" if fields else prefix + message, event)

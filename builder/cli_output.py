"""What the ``builder`` command prints for people, and how it reports what went wrong.

Nodes read the same wherever they appear (``castore import``, ``--import``,
the outputs of ``run`` and ``build --remote``): kind, the ``blake3-`` digest
every digest argument accepts back, and a size in the unit it counts. A
file's size counts bytes; a directory's counts castore entries (the size
rule), so it is never shown as a bare number that could pass for bytes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

from builder.castore.nodes import DirectoryNode, FileNode, Node
from builder.errors import BuilderError, BuildFailedError, InvalidArgumentError, SignalledError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BUILD_FAILED = 100
EXIT_INTERRUPTED = 128 + signal.SIGINT
DEBUG_ENV = "BUILDER_DEBUG"

EXIT_CODES_HELP = f"""exit status:
  0    success
  {EXIT_BUILD_FAILED}  the build failed (exit code, signal, missing output, limit), here or on
       the remote server
  {EXIT_USAGE}    invalid use: a bad option or argument, a path that cannot be used, an
       invalid request
  {EXIT_INTERRUPTED}  interrupted by Ctrl-C (SIGINT); 143 by SIGTERM
  {EXIT_FAILURE}    any other error

A failure is one line on stderr, "builder: error: ...". An unexpected error
(a bug) adds its traceback when ${DEBUG_ENV} is 1 or logging is at debug level."""

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(size: int) -> str:
    """``512 bytes``, ``12.3 KiB``: binary units with one decimal from 1 KiB on."""
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def describe_node(node: Node) -> str:
    """Kind, digest and size of a node, without its name."""
    if isinstance(node, DirectoryNode):
        return f"directory {node.digest} {format_entries(node.size)}"
    if isinstance(node, FileNode):
        mode = " executable" if node.executable else ""
        return f"file {node.digest} {format_bytes(node.size)}{mode}"
    return f"symlink -> {display_bytes(node.target)}"


def display_bytes(raw: bytes) -> str:
    """A name or target as text: decoded when UTF-8, else with the odd bytes escaped."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return repr(raw)[2:-1]


def outputs_table(
    paths: Sequence[str], nodes: Sequence[Node], needles: Sequence[Sequence[int]]
) -> str:
    """One line per output: its request path, then what was stored, then needles found."""
    lines = []
    for path, node, found in zip(paths, nodes, needles, strict=True):
        line = f"{path}\t{describe_node(node)}"
        if found:
            line += "\tneedles " + ",".join(str(i) for i in found)
        lines.append(line)
    return "\n".join(lines)


def exit_code_of(error: BuilderError) -> int:
    """The status a command ends with for a product error (see ``EXIT_CODES_HELP``)."""
    if isinstance(error, BuildFailedError):
        return EXIT_BUILD_FAILED
    if isinstance(error, InvalidArgumentError):
        return EXIT_USAGE
    if isinstance(error, SignalledError):
        return 128 + error.signum
    return EXIT_FAILURE


def report_error(error: BuilderError, stream: TextIO = sys.stderr) -> int:
    print(f"builder: error: {error}", file=stream)
    return exit_code_of(error)


def report_unexpected(error: BaseException, stream: TextIO = sys.stderr) -> int:
    """One line for an error the product did not expect; the traceback only when debugging.

    An ``OSError`` that escaped comes from the host (a disk, a permission),
    not from a mistake in the product, so it is not called a bug.
    """
    debugging = os.environ.get(DEBUG_ENV) == "1" or logging.getLogger().isEnabledFor(logging.DEBUG)
    if isinstance(error, OSError):
        print(f"builder: error: {error}", file=stream)
    else:
        hint = "" if debugging else f"; set {DEBUG_ENV}=1 for the traceback"
        what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        print(f"builder: error: {what} (this is a bug{hint})", file=stream)
    if debugging:
        traceback.print_exception(error, file=stream)
    return EXIT_FAILURE

"""The log set-up costs a command nothing until it writes its first line."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import logging, sys
from builder.logging_setup import configure_logging
configure_logging("info", "plain")
print("before", "structlog" in sys.modules)
logging.getLogger("builder.example").info("stored", extra={"count": 3})
print("after", "structlog" in sys.modules)
"""


def test_structlog_is_imported_only_when_a_line_is_written() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines() == ["before False", "after True"]
    assert result.stderr == "builder: stored count=3\n"

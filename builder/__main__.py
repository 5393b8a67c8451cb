"""``python -m builder``: the same entry point as the ``builder`` command."""

from builder.cli import run

run()

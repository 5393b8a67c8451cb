"""How long transfers (ingests, copies between stores) tell a watcher how far they are.

The castore only counts; whoever shows the counts (a terminal bar, a summary
line, nothing) lives above it. Counts are reported in steps a transfer
already takes anyway, a batch of files or a blob's chunk, never per small
read, so that reporting costs nothing measurable, and always from one thread
at a time, so a reporter needs no lock of its own.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from typing import Protocol


class TransferKind(enum.Enum):
    """What a transfer does, which decides how a reporter words it."""

    IMPORT = "import"
    """Host files ingested into a store."""
    UPLOAD = "upload"
    """Blobs copied from the local store to a server."""
    FETCH = "fetch"
    """Blobs copied from a server into the local store."""


class TransferProgress(Protocol):
    """Counts of one transfer, reported as they grow."""

    def planned(self, files: int, size: int, present: int) -> None:
        """The files and bytes the transfer will move, once known, and how many the target has.

        A transfer whose extent is not known ahead (an ingest walks as it
        stores) never calls this.
        """

    def advanced(self, files: int, size: int) -> None:
        """``files`` more files finished and ``size`` more bytes moved since the last call.

        Bytes of a large file may arrive before the file counts as finished.
        """


class TransferReporters(Protocol):
    """Opens a reporter per transfer; leaving it without an error means the transfer finished."""

    def transfer(self, kind: TransferKind) -> AbstractContextManager[TransferProgress]: ...

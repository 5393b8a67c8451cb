"""Progress of imports, uploads and fetches on standard error.

On a terminal a live bar (files, bytes, rate, and an ETA once the total is
known); anywhere else, where a bar would only litter a log, one line per
transfer once it is done. Only the command line shows progress, so only it
imports this module: the castore just counts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from builder.castore.progress import TransferKind, TransferProgress, TransferReporters
from builder.cli_output import format_bytes


@dataclass(frozen=True)
class _Wording:
    doing: str
    done: str
    thing: str
    present: str

    def things(self, count: int) -> str:
        return f"{count:,} {self.thing}" + ("" if count == 1 else "s")


_WORDING = {
    TransferKind.IMPORT: _Wording("importing", "imported", "file", "already stored"),
    TransferKind.UPLOAD: _Wording("uploading", "uploaded", "blob", "already on the server"),
    TransferKind.FETCH: _Wording("fetching", "fetched", "blob", "already stored here"),
}


def reporters(stream: TextIO) -> TransferReporters:
    """A bar per transfer when ``stream`` is a terminal, else a summary line per transfer.

    A terminal that reports no width (a pseudo-terminal nobody sized) gets
    the summary too: tqdm draws nothing at all in zero columns.
    """
    if stream.isatty() and _columns(stream) > 0:
        return TerminalReporters(stream)
    return SummaryReporters(stream)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except OSError:
        return 0


class _Counts:
    """What a transfer did, for the summary line; updates are plain additions."""

    def __init__(self) -> None:
        self.files = 0
        self.size = 0
        self.present: int | None = None

    def planned(self, files: int, size: int, present: int) -> None:
        self.present = present

    def advanced(self, files: int, size: int) -> None:
        self.files += files
        self.size += size


class SummaryReporters:
    """One line per finished transfer, such as ``uploaded 120 blobs, 3.20 MiB in 0.4 s ...``.

    A copy that found nothing to consider (no blobs at all) says nothing, so
    builds without inputs do not print empty figures.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @contextlib.contextmanager
    def transfer(self, kind: TransferKind) -> Iterator[TransferProgress]:
        counts = _Counts()
        started = time.monotonic()
        yield counts
        elapsed = time.monotonic() - started
        if kind is not TransferKind.IMPORT and not counts.files and not counts.present:
            return
        wording = _WORDING[kind]
        line = (
            f"{wording.done} {wording.things(counts.files)}, "
            f"{format_bytes(counts.size)} in {elapsed:.1f} s"
        )
        if counts.size and elapsed > 0:
            line += f" ({format_bytes(int(counts.size / elapsed))}/s)"
        if counts.present is not None:
            line += f"; {counts.present:,} {wording.present}"
        print(line, file=self._stream, flush=True)


_FILES_SHOWN_EVERY = 0.1
"""Seconds between renderings of the file count, as tqdm spaces out its refreshes."""


class _Bar:
    """A tqdm bar counting bytes (in tqdm's decimal units), with the files in its postfix."""

    def __init__(self, kind: TransferKind, stream: TextIO) -> None:
        self._wording = _WORDING[kind]
        self._files = 0
        self._planned_files: int | None = None
        self._present = ""
        self._next_files_shown = 0.0
        self._bar = tqdm(
            desc=self._wording.doing,
            unit="B",
            unit_scale=True,
            file=stream,
            dynamic_ncols=True,
        )
        self._show_files()

    def planned(self, files: int, size: int, present: int) -> None:
        self._planned_files = files
        self._present = f", {present:,} {self._wording.present}"
        self._bar.total = size
        self._show_files()
        self._bar.refresh()

    def advanced(self, files: int, size: int) -> None:
        self._files += files
        now = time.monotonic()
        if now >= self._next_files_shown:
            self._next_files_shown = now + _FILES_SHOWN_EVERY
            self._show_files()
        self._bar.update(size)

    def close(self) -> None:
        self._show_files()
        self._bar.close()

    def _show_files(self) -> None:
        """Rendered with the bar's next refresh, which tqdm spaces out; none is forced here."""
        if self._planned_files is None:
            files = self._wording.things(self._files)
        else:
            files = f"{self._files:,}/{self._wording.things(self._planned_files)}"
        self._bar.set_postfix_str(files + self._present, refresh=False)


class TerminalReporters:
    """A live bar per transfer, left on screen with its final figures."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    @contextlib.contextmanager
    def transfer(self, kind: TransferKind) -> Iterator[TransferProgress]:
        bar = _Bar(kind, self._stream)
        try:
            yield bar
        finally:
            bar.close()

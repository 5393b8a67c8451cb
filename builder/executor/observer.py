"""What the build service tells whoever watches builds start and end.

The service is plain Python and reports to no particular system; a server
that exports metrics (or anything else that counts builds) registers an
observer and receives each build's start and end as they happen. Observers
run on the build's own thread, so they must be quick and must not raise.
"""

from __future__ import annotations

from typing import Protocol

from builder.executor.outcome import Outcome


class BuildObserver(Protocol):
    def build_started(self) -> None:
        """A build call reached the service (it may still be refused or answered from cache)."""
        ...

    def build_finished(self, outcome: Outcome, seconds: float) -> None:
        """A build call ended ``outcome`` after ``seconds`` since it reached the service."""
        ...

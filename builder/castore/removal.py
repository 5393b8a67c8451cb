"""Removing stored blobs and directories, and how readers notice that something went.

A store only grows until something removes what it holds (garbage
collection). A reader that has checked a whole closure is present can rely on
that check for as long as nothing has been removed since, and the removal
epoch tells it so for the price of one cheap question instead of a walk over
the closure.

The epoch must change once a removal is visible, never before: a reader that
reads the epoch and then finds an object present knows the object was present
at or after that epoch, so if the epoch has not moved since, the object is
still there. An epoch that moved first and an object that vanished after a
reader had checked it would leave the reader trusting a check it no longer
holds. A service whose storage other processes share keeps its epoch in that
storage, so that removals made by one process are seen by every other.

A service that never removes anything may answer with a constant; a service
that answers no epoch at all is walked every time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from builder.castore.digest import Digest


@runtime_checkable
class RemovalEpoch(Protocol):
    def removal_epoch(self) -> int:
        """A number that differs from every earlier answer once anything has been removed."""
        ...


@runtime_checkable
class Removable(RemovalEpoch, Protocol):
    def remove(self, digest: Digest) -> bool:
        """Remove what is stored under ``digest``; whether it was there.

        The removal epoch advances when something was removed, once it is gone.
        """
        ...

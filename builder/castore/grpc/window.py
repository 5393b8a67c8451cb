"""Many calls in flight on one channel, settled in order, without a thread per call.

A unary call's future, and a server-streaming call's iterator, are driven by
the channel's own completion thread, so keeping a window of them open hides
the round trip at the cost of one object per call. The window is bounded
because each call in flight holds a server worker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

WINDOW = 8


def windowed(
    items: Iterable[Item],
    start: Callable[[Item], Any],
    settle: Callable[[Item, Any], Result],
    size: int = WINDOW,
) -> Iterator[Result]:
    """``settle(item, start(item))`` for every item, with up to ``size`` started ahead.

    Calls still in flight when the caller stops early, or when one fails, are cancelled.
    """
    pending: deque[tuple[Item, Any]] = deque()
    try:
        for item in items:
            pending.append((item, start(item)))
            if len(pending) >= size:
                yield settle(*pending.popleft())
        while pending:
            yield settle(*pending.popleft())
    finally:
        for _, call in pending:
            call.cancel()

"""Fewer garbage collections while a replay folds the log.

A rebuild allocates a new state object for every event (states are immutable) and
keeps the last of each aggregate, so the collector's default pace (a young
collection every 700 allocations, promoting survivors into ever larger older
ones) spent a fifth of the fold's time walking states that are all still live.
Raising the young threshold for the rebuild's length keeps collections, only
rarer; the previous thresholds come back when the last rebuild ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["REPLAY_THRESHOLD", "fewer_collections"]

REPLAY_THRESHOLD = 100_000
"""Allocations between young collections during a replay (the default is 700)."""


class _Pace:
    holders = 0
    saved: tuple[int, int, int] = gc.get_threshold()


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the young generation's threshold until the block ends (rebuilds may nest or
    overlap: the first in sets it, the last out restores it)."""
    if _Pace.holders == 0:
        _Pace.saved = gc.get_threshold()
        young, middle, old = _Pace.saved
        gc.set_threshold(max(young, REPLAY_THRESHOLD), middle, old)
    _Pace.holders += 1
    try:
        yield
    finally:
        _Pace.holders -= 1
        if _Pace.holders == 0:
            gc.set_threshold(*_Pace.saved)

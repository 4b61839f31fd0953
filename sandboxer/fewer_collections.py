"""Fewer garbage collections while a long history is folded: a replay of the log, or a
long aggregate loaded fresh (and an account's decided ids put back from its checkpoint).

A rebuild allocates a new state object for every event (states are immutable) and
keeps the last of each aggregate, so the collector's default pace (a young
collection every 700 allocations, promoting survivors into ever larger older
ones) spent a fifth of the fold's time walking states that are all still live.
Raising the young threshold for the fold's length keeps collections, only
rarer; the previous thresholds come back when the last fold ends. The 100,000 ids of
an account's checkpoint went back into its map in 21 ms with no collections, 36 to 42 ms
at the default pace, and 197 ms when a full collection of a process holding two million
objects fell inside it (docs/performance.md, Accounts).
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
    """Raise the young generation's threshold until the block ends (folds may nest or
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

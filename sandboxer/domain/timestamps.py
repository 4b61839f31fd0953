"""Arithmetic on the timestamps events carry (ISO 8601 UTC with milliseconds, ``Z``).

Pure: the domain reckons deadlines from times in the log, never from the wall clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["LATEST", "seconds_between", "shift"]


LATEST = "9999-12-31T23:59:59.999Z"
"""What :func:`shift` answers past the calendar's end (a profile may write ``ttl.max: 9999999d``)."""


def shift(at: str, seconds: float) -> str:
    """``at`` moved by ``seconds``, in the same format (so timestamps still sort as text)."""
    try:
        moved = datetime.fromisoformat(at) + timedelta(seconds=seconds)
    except OverflowError:
        return LATEST
    return moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()

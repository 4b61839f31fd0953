"""Durations as people write them: ``90s``, ``15m``, ``2h``, ``1d``."""

from __future__ import annotations

import re

from sandboxer.errors import InvalidInput

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text``.

    Raises :class:`InvalidInput` naming the allowed form (a pydantic validator
    turns it into a ValueError, which pydantic reports with the field).
    """
    match = _PATTERN.match(text)
    if match is None:
        raise InvalidInput(
            f"invalid duration {text!r}: write a number followed by s, m, h or d (e.g. 90s, 15m, 2h, 1d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact form of ``seconds`` (``3600`` -> ``1h``)."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0 and whole == seconds:
            return f"{whole // size}{unit}"
    return f"{seconds:g}s"

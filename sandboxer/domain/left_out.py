"""What a snapshot's copy of a workspace left out, and the bounded lines that tell its user.

A workspace may hold what no snapshot can store: FIFOs, sockets and device nodes (reading a
FIFO would block forever, a socket or a device is not data). Each backend's copy leaves them
out and reports them here; the worker records :meth:`LeftOut.warnings` in
``snapshot_created`` so that whoever restores the snapshot is told what is missing.

A sandbox chooses how many such files it holds and what they are called, and an event is
stored forever under a size limit: so only a count and the first few names are kept, each
name is cut and escaped (a name may hold newlines, control characters or bytes that are not
UTF-8), and every line is at most :data:`MAX_LINE` characters, one per kind.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["MAX_LINE", "MAX_NAME", "MAX_NAMES", "Kind", "LeftOut", "shown_name"]

Kind = Literal["fifo", "socket", "device"]

MAX_NAMES = 5
"""How many names of each kind a line lists (and a :class:`LeftOut` keeps)."""
MAX_NAME = 100
"""Characters of one name a line shows (longer ones are cut, with ``...``)."""
MAX_LINE = 400
"""Characters of one warning line, whatever the names: three kinds, so 1.2 KB at most."""

_NOUNS: dict[Kind, tuple[str, str]] = {
    "fifo": ("FIFO", "FIFOs"),
    "socket": ("socket", "sockets"),
    "device": ("device node", "device nodes"),
}


def shown_name(name: str) -> str:
    """``name`` as a line shows it: what is not printable (a newline, a byte that was not
    UTF-8, decoded as a lone surrogate that JSON cannot carry) escaped, at most
    :data:`MAX_NAME` characters."""
    shown = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in name[: MAX_NAME + 1]
    )
    return shown if len(shown) <= MAX_NAME else shown[: MAX_NAME - 3] + "..."


class LeftOut:
    """Filled while a copy runs: how many files of each kind it left out, and the first
    :data:`MAX_NAMES` names of each (relative to the workspace), never more."""

    def __init__(self) -> None:
        self._counts: dict[Kind, int] = {}
        self._names: dict[Kind, list[str]] = {}

    def add(self, kind: Kind, name: str, count: int = 1) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + count
        names = self._names.setdefault(kind, [])
        if len(names) < MAX_NAMES:
            names.append(name)

    def merge(self, other: LeftOut, *, under: str = "") -> None:
        """Add what ``other`` left out, its names below the directory ``under``."""
        for kind, count in other._counts.items():
            names = other._names.get(kind, [])
            for name in names:
                self.add(kind, f"{under}/{name}" if under else name)
            if count > len(names):  # counted, their names not kept
                self._counts[kind] = self._counts.get(kind, 0) + count - len(names)

    def count(self, kind: Kind) -> int:
        return self._counts.get(kind, 0)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def warnings(self) -> tuple[str, ...]:
        """One line per kind left out, e.g. ``left out 7 FIFOs: run/a.fifo, run/b.fifo and 5
        more``; each at most :data:`MAX_LINE` characters."""
        return tuple(
            _line(kind, self._counts[kind], self._names.get(kind, []))
            for kind in _NOUNS
            if self._counts.get(kind)
        )


def _line(kind: Kind, count: int, names: list[str]) -> str:
    one, many = _NOUNS[kind]
    head = f"left out {count} {one if count == 1 else many}: "
    # Room kept for the longest tail, so that names are added only while the line fits.
    room = MAX_LINE - len(head) - len(f" and {count} more")
    listed: list[str] = []
    used = 0
    for name in names:
        shown = shown_name(name)
        needed = len(shown) + (2 if listed else 0)
        if used + needed > room:
            break
        listed.append(shown)
        used += needed
    rest = count - len(listed)
    if not listed:
        return f"left out {count} {one if count == 1 else many}"
    return head + ", ".join(listed) + (f" and {rest} more" if rest else "")

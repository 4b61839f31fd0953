"""Which objects of the workspaces bucket nobody will ask for again: pure, given the bucket's
listing, what the log holds, the time and the grace period.

Besides the objects snapshots' jobs store (their own rule: :mod:`.snapshot_objects`), the
bucket receives what clients put for a create's directory input, the archives a copy in or
out moves through it, and, from a put killed before its metadata, chunks no object names.
Nothing else ever removed any of them. An object no event can name later is collected
once it is **unmarked** (a mark is the snapshot rule's), **held by nobody** (no snapshot
that is not deleted records it, no sandbox that is not destroyed names it as an input: a
recreate fetches it again, a restore names its snapshot's), and **older than the grace
period** by its metadata's last write. The grace is what covers references not in the
log yet: a client puts (or touches, when the object is there already) and sends its create
seconds later; a create redelivered before it appended; a copy's request in flight. Stray
chunks are purged once their last chunk is older than the grace (a put still running writes
chunks before its metadata).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["DEFAULT_OBJECT_GRACE", "Stored", "aged", "stale_chunks", "unheld"]

DEFAULT_OBJECT_GRACE = 24 * 3600.0
"""Seconds an object nobody holds stays after its last put or touch: a day, far past a
create's deliveries and a copy's hour (transfer.FILES_TIMEOUT), short enough that the
bucket stops growing with one-off uploads."""


@dataclass(frozen=True)
class Stored:
    """One live object as listed: name, chunks' nuid, snapshot mark (None: unmarked), and
    its metadata's stream sequence and time (the last put or touch)."""

    name: str
    nuid: str
    owner: str | None
    seq: int
    written: datetime


def unheld(objects: Iterable[Stored], held: set[str], now: datetime, grace: float) -> list[Stored]:
    """The unmarked ``objects`` no name in ``held`` (object names) covers, written at
    least ``grace`` seconds before ``now``."""
    cutoff = now - timedelta(seconds=grace)
    return [o for o in objects if o.owner is None and o.name not in held and o.written <= cutoff]


def stale_chunks(strays: Mapping[str, datetime], now: datetime, grace: float) -> list[str]:
    """Of the chunk subjects no live object names (with their last chunk's time), those
    written to last at least ``grace`` seconds before ``now``."""
    cutoff = now - timedelta(seconds=grace)
    return sorted(subject for subject, last in strays.items() if last <= cutoff)


def aged(objects: Iterable[Stored], now: datetime, grace: float) -> bool:
    """Whether any unmarked object is old enough to be judged (else the log need not be read)."""
    cutoff = now - timedelta(seconds=grace)
    return any(o.owner is None and o.written <= cutoff for o in objects)

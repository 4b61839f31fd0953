"""The sandbox view's checkpoint: a copy of a projector's SQLite view as of one event, kept in
the checkpoints bucket (:mod:`sandboxer.bus.checkpoint_bucket`), one per shape of the view
(``view.<fingerprint>``).

A projector with no view of its own (a new machine, a lost home), or with one of another
shape (after an upgrade another process made first), starts from it and reads only the log
after it, instead of folding the whole log from sequence 1. It is trusted only as the view
it says it is: of this shape (the fingerprint is the object's name and is in the file), and
of this log, which must still hold, at the position the view reached, the very event it
had folded there (a digest recorded beside it). Anything else is a rebuild from sequence 1,
as before: the view stays what the log folds to.

Only the service identity may read or write the bucket (docs/security.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMeta
from nats.js.object_store import ObjectStore

from sandboxer.bus.checkpoint_bucket import (
    event_digest,
    list_checkpoints,
    read_checkpoint,
    stored_info,
)

__all__ = ["StoredView", "ViewCheckpoints"]

log = logging.getLogger(__name__)

PREFIX = "view."
POSITION = "Sandboxer-Position"
"""The object's header: the stream sequence the view had reached."""
EVENT = "Sandboxer-Event"
"""The object's header: the digest of the log's event at that sequence."""


@dataclass(frozen=True)
class StoredView:
    """A view checkpoint as the bucket describes it (nothing of it read yet)."""

    info: ObjectInfo
    position: int
    event: str


class ViewCheckpoints:
    """Reads and writes the sandbox view's checkpoints (see the module)."""

    def __init__(self, js: JetStreamContext, bucket: ObjectStore) -> None:
        self._js = js
        self._bucket = bucket

    async def stored(self, fingerprint: str) -> StoredView | None:
        """The checkpoint of the view of this shape, as its metadata describes it; None
        when there is none, or its metadata is not what a write of ours leaves."""
        info = await stored_info(self._js, PREFIX + fingerprint)
        if info is None or not info.size:
            return None
        position, event = _header(info, POSITION), _header(info, EVENT)
        if position is None or not position.isdigit() or event is None:
            return None
        return StoredView(info, int(position), event)

    async def fetch(self, stored: StoredView, destination: Path) -> bool:
        """Write the checkpoint to ``destination``; whether it is all there, and the log
        still holds at its position the event it was folded up to."""
        with destination.open("wb") as out:
            whole = await read_checkpoint(self._js, stored.info, out.write)
        if not whole:
            return False
        return await event_digest(self._js, stored.position) == stored.event

    async def write(self, copy: Path, fingerprint: str, position: int) -> bool:
        """Store ``copy`` (a view of this shape that reached ``position``) as the checkpoint;
        the views of other shapes go (whoever still runs one rebuilds it from the log). False
        when the log does not hold an event at ``position``."""
        event = await event_digest(self._js, position)
        if event is None:
            return False
        meta = ObjectMeta(headers={POSITION: str(position), EVENT: event})
        with copy.open("rb") as data:
            await self._bucket.put(PREFIX + fingerprint, data, meta=meta)
        await self.forget(but=fingerprint)
        return True

    async def forget(self, *, but: str | None = None) -> None:
        """Remove the views' checkpoints, but the one of shape ``but``; the accounts' stay."""
        kept = None if but is None else PREFIX + but
        for stored in await list_checkpoints(self._js):
            if stored.name.startswith(PREFIX) and stored.name != kept:
                try:
                    await self._bucket.delete(stored.name)
                except NatsError as exc:  # another process retired it first, say
                    log.info("view checkpoint %s not removed (%r)", stored.name, exc)


def _header(info: ObjectInfo, name: str) -> str | None:
    """One header of an object's metadata, as nats-py (a string) or Go (a list) writes it."""
    value = (info.headers or {}).get(name)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else None

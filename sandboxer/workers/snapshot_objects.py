"""Collect the snapshot objects nothing holds: a killed or failed job's, a deleted snapshot's.

The rule is :mod:`sandboxer.domain.snapshot_objects`; this is its I/O: list the
workspaces bucket, read the owners' logs, remove the orphans. Extension workers
run it at their start, on every leak sweep, and when a snapshot job ends after
an earlier delivery of it (which may have stored an object before it died).
Every step is idempotent: workers collecting at once remove an object once
(a removal that finds it gone is done), and one cut off is taken again by the
next collection.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.domain.snapshot_objects import owner_of, to_collect
from sandboxer.workspaces.refs import object_ref

__all__ = ["collect_orphaned_objects"]

log = logging.getLogger(__name__)

_PREFIX = "sha256-"


async def collect_orphaned_objects(js: JetStreamContext, store: EventStore) -> list[str]:
    """Remove every object of the workspaces bucket that a snapshot's job stored and that
    nothing holds any more; the names removed. Objects a client uploaded (unmarked) are
    never touched here."""
    try:
        bucket = await js.object_store(subjects.WORKSPACES_BUCKET)
        listed = await bucket.list(ignore_deletes=True)
    except (BucketNotFoundError, NotFoundError):  # nothing was ever stored, or nothing is
        return []
    marked = [
        (info.name, owner_id)
        for info in listed
        if (owner_id := owner_of(info.headers)) and info.name.startswith(_PREFIX)
    ]
    if not marked:
        return []
    # One read of every snapshot's log, whatever the number of objects: a read behind the
    # log errs towards keeping (an owner or a holder seen still requested).
    removed: list[str] = []
    for name, owner_id in to_collect(marked, await store.snapshot_states()):
        # A sandbox restored from it (or made from an upload of the same tree) that is not
        # destroyed: its recreate fetches the object again.
        if await store.sandboxes_using(object_ref(name.removeprefix(_PREFIX))):
            continue
        try:
            await bucket.delete(name)
        except NotFoundError:  # another worker's collection (or a delete) was first
            continue
        log.info("snapshot %s: removed its orphaned object %s", owner_id, name)
        removed.append(name)
    return removed

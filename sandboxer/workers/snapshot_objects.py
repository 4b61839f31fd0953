"""Collect the workspaces bucket's objects nothing holds: a killed or failed snapshot job's, a
deleted snapshot's, and (after a grace period) uploads, copies' archives and stray chunks.

The rules are :mod:`sandboxer.domain.snapshot_objects` (objects a snapshot's job marked)
and :mod:`sandboxer.domain.bucket_objects` (the rest); this is their I/O: list the bucket's
metadata, read the log once, remove. Extension workers run it at their start, on every leak
sweep, and when a snapshot job ends after an earlier delivery of it (which may have stored
an object before it died). Every step is idempotent and safe beside other workers doing the
same: a removal writes only over the metadata it judged (an object touched or removed since
is left alone), a purge of chunks already gone does nothing, and a collection cut off is
taken again by the next.

Cost per sweep: one stream info (the bucket's subjects) and one read of its metadata, never
the bytes. The log is read only when something may go: every snapshot once some object is
marked or old enough to be judged, and the sandboxes' ``requested`` and ``destroyed`` once
some object is an orphan by the snapshots alone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.bus.object_buckets import bucket_subjects, list_stored, purge_chunks, stray_chunks
from sandboxer.domain.bucket_objects import DEFAULT_OBJECT_GRACE, aged, stale_chunks, unheld
from sandboxer.domain.snapshot_objects import to_collect
from sandboxer.errors import WorkspaceRefused
from sandboxer.workspaces.refs import is_object_ref, object_name, parse_object_ref
from sandboxer.workspaces.stored_objects import remove_unchanged

__all__ = ["collect_orphaned_objects"]

BUCKET = subjects.WORKSPACES_BUCKET

log = logging.getLogger(__name__)

_PREFIX = "sha256-"


def _names(inputs: set[str]) -> set[str]:
    """The bucket names the object references among ``inputs`` point at (paths and other
    values are not the bucket's; a malformed reference names nothing)."""
    names: set[str] = set()
    for value in inputs:
        if is_object_ref(value):
            try:
                names.add(object_name(parse_object_ref(value)))
            except WorkspaceRefused:
                continue
    return names


async def collect_orphaned_objects(
    js: JetStreamContext, store: EventStore, *, grace: float = DEFAULT_OBJECT_GRACE
) -> list[str]:
    """Remove what the bucket holds for nobody; the object names removed (and the stray
    chunk subjects purged). ``grace``: seconds an unmarked object, or a stray chunk, stays
    after its last write (``SANDBOXER_OBJECT_GRACE``)."""
    present = await bucket_subjects(js, bucket=BUCKET)
    if present is None:  # nothing was ever stored
        return []
    now = datetime.now(UTC)
    listed = await list_stored(js, present, bucket=BUCKET)
    removed: list[str] = []
    # Chunks no metadata names: a put killed before its metadata (or a delete, or a
    # replacement, killed before its purge). A put still running wrote one lately.
    for subject in stale_chunks(await stray_chunks(js, present, listed, bucket=BUCKET), now, grace):
        await purge_chunks(js, subject, bucket=BUCKET)
        log.info("workspaces bucket: purged stray chunks %s", subject)
        removed.append(subject)
    marked = [
        (found.name, found.owner)
        for found in listed
        if found.owner is not None and found.name.startswith(_PREFIX)
    ]
    if not marked and not aged(listed, now, grace):
        return removed
    # One read of the log, whatever the number of objects: a read behind the log errs
    # towards keeping (an owner or a holder seen still requested, a sandbox not destroyed).
    snapshots = await store.snapshot_states()
    orphans = to_collect(marked, snapshots)
    kept = {s.object for s in snapshots if s.object is not None and s.status != "deleted"}
    candidates = unheld(listed, kept, now, grace)
    if not orphans and not candidates:
        return removed
    # A sandbox restored from a snapshot's object (or made from an upload of the same
    # tree) that is not destroyed: its recreate fetches the object again.
    used = _names(await store.objects_in_use())
    by_name = {found.name: found for found in listed}
    for name, owner_id in orphans:
        if name not in used and await remove_unchanged(js, by_name[name]):
            log.info("snapshot %s: removed its orphaned object %s", owner_id, name)
            removed.append(name)
    for found in candidates:
        if found.name not in used and await remove_unchanged(js, found):
            log.info("workspaces bucket: removed %s, held by nothing for %.0f s", found.name, grace)
            removed.append(found.name)
    return removed

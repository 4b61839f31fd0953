"""Which stored snapshot objects are orphans: pure, from what the log says of the snapshots.

A snapshot's job puts the workspace's archive in the bucket, then records
``snapshot_created`` naming it: two steps, and a worker killed (or a job
failing) between them leaves an object no event names. The job that runs
again packs the workspace as it is then and stores that, or fails, so the
first object is never recorded, and nothing would ever remove it. The job
therefore marks an object it stores itself with its snapshot's id
(:data:`OWNER_HEADER`, in the object's metadata): the bucket says which
snapshot put what, and the snapshot's log says whether it kept it.

An object is collected only when all three hold:

- its owner is done with it: the owner failed, was deleted, or was created
  naming another object (a later attempt's). An owner still ``requested``
  (a slow or frozen job, which may yet record this object) or unknown to the
  log (``new``: its ``requested`` not readable yet, or a mark nobody wrote
  for a snapshot) keeps it;
- no snapshot that is not deleted names it (content addressing: another
  snapshot of the same tree shares it), nor does a sandbox that is not
  destroyed (checked by the caller: :meth:`EventStore.sandboxes_using`);
- no snapshot is being taken (``requested``) anywhere: one of the same tree
  may have found the object in the bucket and not stored it again, and is
  about to record it. Collection waits for a moment with none.
"""

from __future__ import annotations

from collections.abc import Iterable

from sandboxer.domain.snapshot_state import SnapshotState
from sandboxer.ids import is_valid_sandbox_id

__all__ = ["OWNER_HEADER", "orphaned", "owned_by", "owner_of", "to_collect"]

OWNER_HEADER = "Sandboxer-Snapshot"
"""The object metadata header naming the snapshot whose job stored the object."""


def owned_by(snapshot_id: str) -> dict[str, list[str]]:
    """The object headers that mark an object as stored by ``snapshot_id``'s job. A list of
    values, as NATS headers are (the Go tools, ``nats object info``, read them so)."""
    return {OWNER_HEADER: [snapshot_id]}


def owner_of(headers: object) -> str | None:
    """The snapshot an object's headers name as its owner (None: a client's upload, or a
    mark that is not ours). Metadata anyone on the bus may have written: read defensively,
    and only an id of the ids' alphabet, since it becomes a subject token (a ``*`` would
    fold every snapshot's events into one)."""
    if not isinstance(headers, dict):
        return None
    value = headers.get(OWNER_HEADER)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) and is_valid_sandbox_id(value) else None


def orphaned(owner: SnapshotState, name: str) -> bool:
    """Whether ``owner`` (the snapshot whose job stored the object ``name``) is done with it.
    A deleted snapshot whose object was kept (shared at the time) is done with it too: once
    its holders are gone it is an orphan like any other."""
    if owner.status in {"failed", "deleted"}:
        return True
    return owner.status == "created" and owner.object != name


def to_collect(
    marked: Iterable[tuple[str, str]], snapshots: Iterable[SnapshotState]
) -> list[tuple[str, str]]:
    """Of the ``marked`` objects, ``(name, owner's snapshot id)``, those to collect, given
    every snapshot the log holds: none while a snapshot is being taken (it may record one of
    them). Sandboxes using them are the caller's to check. Linear in both."""
    known = {state.snapshot_id: state for state in snapshots}
    if any(state.status == "requested" for state in known.values()):
        return []
    held = {s.object for s in known.values() if s.object is not None and s.status != "deleted"}
    return [
        (name, owner_id)
        for name, owner_id in marked
        if name not in held
        and orphaned(known.get(owner_id) or SnapshotState(snapshot_id=owner_id), name)
    ]

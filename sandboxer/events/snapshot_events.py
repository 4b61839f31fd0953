"""The snapshot aggregate's events (``sandboxer.evt.snapshot.<id>.<type>``)."""

from __future__ import annotations

import msgspec

from sandboxer.events.actor import Actor

__all__ = [
    "SNAPSHOT_EVENTS",
    "SnapshotCreated",
    "SnapshotDeleted",
    "SnapshotEvent",
    "SnapshotFailed",
    "SnapshotRequested",
]


class _SnapshotEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event type; a type that changes shape redeclares it."""
    event_id: str = ""
    """Unique id, also the ``Nats-Msg-Id`` of the append; set by the event store."""
    snapshot_id: str
    command_id: str
    """Correlation: the snapshot (or delete) command whose processing produced this event."""
    causation_id: str | None = None
    actor: Actor
    at: str
    """UTC time, ISO 8601 with milliseconds."""


class SnapshotRequested(_SnapshotEventBase, frozen=True, kw_only=True, tag="snapshot_requested"):
    """A snapshot of ``sandbox_id`` was accepted; its backend's worker copies the workspace."""

    sandbox_id: str
    extension: str
    host: str | None = None
    name: str | None = None
    profile: str | None = None
    """The source sandbox's profile: what a restore uses unless it names another."""
    project: str | None = None
    """The project the snapshot belongs to: its sandbox's, whoever took it (an administrator
    may snapshot any project's sandbox). None in events stored before it was recorded, whose
    sandbox tells (``domain/key_access.snapshot_owner``)."""


class SnapshotCreated(_SnapshotEventBase, frozen=True, kw_only=True, tag="snapshot_created"):
    """The snapshot's data is stored: ``object`` in ``bucket``, ``size`` bytes, ``sha256``.

    The data itself never enters the log; a restore fetches the object and
    checks its digest on arrival.
    """

    bucket: str
    object: str
    """The object's name in the bucket (content addressed: ``sha256-<hex>``)."""
    size: int
    sha256: str
    warnings: tuple[str, ...] = ()
    """What the copy left out, one line per kind (``left out 2 FIFOs: run/a.fifo, run/b``):
    a restore lacks it. A few hundred characters each at most, whatever the sandbox held
    (:mod:`sandboxer.domain.left_out`). Empty in events stored before it was recorded."""


class SnapshotFailed(_SnapshotEventBase, frozen=True, kw_only=True, tag="snapshot_failed"):
    """No snapshot was stored; ``reason`` says why."""

    reason: str


class SnapshotDeleted(_SnapshotEventBase, frozen=True, kw_only=True, tag="snapshot_deleted"):
    """The snapshot was deleted: its data goes (unless another snapshot shares the object),
    its history stays."""

    object_removed: bool = False
    """Whether the stored object was removed (False while another snapshot still uses it)."""


SnapshotEvent = SnapshotRequested | SnapshotCreated | SnapshotFailed | SnapshotDeleted
"""The snapshot aggregate's events. Their tags carry a ``snapshot_`` prefix because every
tag is unique across :data:`Event`; their subjects drop it (``sandboxer.evt.snapshot.<id>.created``)."""
SNAPSHOT_EVENTS = (SnapshotRequested, SnapshotCreated, SnapshotFailed, SnapshotDeleted)
"""For ``isinstance``: the snapshot aggregate's events."""

"""The warm pool's events (``sandboxer.evt.pool.<member_id>.<added|ready|claimed|removed>``).

A pool member is a sandbox a backend made ahead of demand for one profile
(docs/pools.md). Each member is its own small aggregate, so that two workers
claiming at once conflict only when they reach for the same member, and the
log's expected-sequence check lets exactly one of them have it. A member is
not a user's sandbox: it has no TTL, no project and no cost until a create
claims it; from then on it is that create's sandbox (whose own events say
``ready`` with ``pool_member``).
"""

from __future__ import annotations

import msgspec

from sandboxer.events.actor import Actor

__all__ = [
    "POOL_EVENTS",
    "PoolEvent",
    "PoolMemberAdded",
    "PoolMemberClaimed",
    "PoolMemberReady",
    "PoolMemberRemoved",
]


class _PoolEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event type; a type that changes shape redeclares it."""
    event_id: str = ""
    """Unique id, also the ``Nats-Msg-Id`` of the append; set by the event store."""
    member_id: str
    """The member's id: a sandbox id (``pool`` and hex digits) naming what the backend made."""
    pool: str
    """Which pool it belongs to: ``<extension>@<node>:<profile>``."""
    command_id: str
    """Correlation: the keeper's fill round, or the job of the create that claimed it."""
    causation_id: str | None = None
    actor: Actor
    at: str
    """UTC time, ISO 8601 with milliseconds."""


class PoolMemberAdded(_PoolEventBase, frozen=True, kw_only=True, tag="pool_member_added"):
    """A keeper started making a member (before any I/O, so a crash leaves a record)."""

    profile: str
    profile_version: int
    profile_digest: str
    """A hash of the profile the member was made for: a create claims only a member made
    for the profile exactly as it stands (and as the create narrowed it, if it did)."""
    extension: str
    node: str
    """Where the member lives (host-local backends): the keeper's machine and root."""
    worker: str
    """The worker (``host:pid``) making it: another keeper on the node leaves a member
    alone while this worker lives."""


class PoolMemberReady(_PoolEventBase, frozen=True, kw_only=True, tag="pool_member_ready"):
    """The member is made and answers: a create may claim it."""


class PoolMemberClaimed(_PoolEventBase, frozen=True, kw_only=True, tag="pool_member_claimed"):
    """A create claimed the member: it becomes sandbox ``sandbox_id`` (exactly one claim
    lands per member: the append expects the member's ``ready`` as its last event)."""

    sandbox_id: str


class PoolMemberRemoved(_PoolEventBase, frozen=True, kw_only=True, tag="pool_member_removed"):
    """The member is given up unclaimed (drained, made for an older profile, or dead); it is
    torn down after this event, so a claim that lands first keeps it."""

    reason: str


PoolEvent = PoolMemberAdded | PoolMemberReady | PoolMemberClaimed | PoolMemberRemoved
POOL_EVENTS = (PoolMemberAdded, PoolMemberReady, PoolMemberClaimed, PoolMemberRemoved)

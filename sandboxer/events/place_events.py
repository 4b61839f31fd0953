"""A host's places (``sandboxer.evt.host.<host>.place.<taken|freed>``): who holds its room.

A host in the hosts file with ``max_sandboxes`` is its own small aggregate: each
sandbox placed on it takes a place there before the sandbox's own events are
appended, under the host's expected sequence, so two control workers placing at
once conflict and one decides again on what the other took (docs/routing.md#capacity).
A place is freed once: when a create on the full host finds its sandbox no
longer holds it (destroyed, failed, moved elsewhere, or its create given up),
or by its own create, refused after taking it.
"""

from __future__ import annotations

import msgspec

from sandboxer.events.actor import Actor

__all__ = ["PLACE_EVENTS", "PlaceEvent", "PlaceFreed", "PlaceTaken"]


class _PlaceEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event type; a type that changes shape redeclares it."""
    event_id: str = ""
    """Unique id, also the ``Nats-Msg-Id`` of the append; set by the event store."""
    host: str
    """A host name from the hosts file: the aggregate."""
    sandbox_id: str
    """The sandbox whose place it is."""
    command_id: str
    """Correlation: the create (or reroute) that took the place; for a place freed, that
    create refused, or ``free-<taker>`` when a create on the full host found it given up."""
    actor: Actor
    at: str
    """UTC time, ISO 8601 with milliseconds."""


class PlaceTaken(_PlaceEventBase, frozen=True, kw_only=True, tag="place_taken"):
    """``sandbox_id`` holds one of the host's places for ``extension`` (whose live sandboxes
    the host's ``max_sandboxes`` caps), taken while fewer than ``limit`` were held."""

    extension: str
    limit: int
    """The host's ``max_sandboxes`` when the place was taken."""


class PlaceFreed(_PlaceEventBase, frozen=True, kw_only=True, tag="place_freed"):
    """The sandbox holds the place no longer: ``reason`` says why (its status, or where it
    went instead)."""

    reason: str


PlaceEvent = PlaceTaken | PlaceFreed
PLACE_EVENTS = (PlaceTaken, PlaceFreed)

"""The API key aggregate's events (``sandboxer.evt.key.<key_id>.<created|revoked>``).

A key is a random secret that the CLI shows once; the log keeps only its
SHA-256 (``key_hash``), never the key. The key id is derived from the hash
(:func:`sandboxer.domain.key_state.key_id_for`), so a gateway that is shown a
key finds its history without any index.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sandboxer.events.actor import Actor

__all__ = ["KEY_EVENTS", "KeyCreated", "KeyEvent", "KeyRevoked"]


class _KeyEventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    """Schema version of this event type; a type that changes shape redeclares it."""
    event_id: str = ""
    """Unique id, also the ``Nats-Msg-Id`` of the append; set by the event store."""
    key_id: str
    """The key's id: derived from its hash, lowercase letters and digits."""
    command_id: str
    causation_id: str | None = None
    actor: Actor
    """Who created or revoked the key (an administrator)."""
    at: str
    """UTC time, ISO 8601 with milliseconds."""


class KeyCreated(_KeyEventBase, frozen=True, kw_only=True, tag="key_created"):
    """An API key exists: requests bearing it act as ``{key_type, key_id, project}``."""

    key_hash: str
    """SHA-256 of the key, 64 lowercase hex digits (the key itself is never stored)."""
    project: str
    key_type: Literal["adm", "agt", "atm"]
    """The actor type its requests act as."""
    name: str | None = None
    """A label for people."""
    max_live: int
    """Live sandboxes the key's project may have when the key creates one."""
    rate_per_second: int
    """Requests per second the key may make (per gateway process)."""
    bus_hash: str | None = None
    """bcrypt of the key, for its NATS identity (docs/security.md#keys-on-the-bus); None: the
    key works over HTTP only (keys created before bus identities, or created without)."""


class KeyRevoked(_KeyEventBase, frozen=True, kw_only=True, tag="key_revoked"):
    """The key no longer works: every request bearing it is refused from now on."""

    reason: str | None = None


KeyEvent = KeyCreated | KeyRevoked
KEY_EVENTS = (KeyCreated, KeyRevoked)
"""For ``isinstance``: the key aggregate's events."""

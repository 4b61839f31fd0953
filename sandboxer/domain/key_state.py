"""The API key aggregate's state, ``evolve_key(state, event)``, and what a key is. Pure.

A key is ``sbx_`` followed by 43 URL-safe random characters (256 bits). Only
its SHA-256 is recorded; its id is derived from that hash, so whoever holds
the key can find its history (``sandboxer.evt.key.<key_id>.>``) and no one
can find the key from the log.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Literal

import msgspec

from sandboxer.events.actor import Actor
from sandboxer.events.key_events import KeyCreated, KeyEvent, KeyRevoked

__all__ = [
    "DEFAULT_MAX_LIVE",
    "DEFAULT_RATE_PER_SECOND",
    "KEY_PREFIX",
    "MAX_KEY_CHARS",
    "KeyState",
    "evolve_key",
    "fold_key",
    "hash_key",
    "is_valid_bus_hash",
    "is_valid_key_hash",
    "is_valid_key_id",
    "key_id_for",
    "looks_like_key",
    "new_key",
]

KEY_PREFIX = "sbx_"
"""What every key starts with, so a leaked one is recognizable (and scanners can find it)."""
MAX_KEY_CHARS = 128
"""Longer bearer tokens are not keys of ours: refused before they are hashed."""
DEFAULT_MAX_LIVE = 10
DEFAULT_RATE_PER_SECOND = 10

_KEY = re.compile(r"^sbx_[A-Za-z0-9_-]{20,124}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^key[a-z2-7]{17}$")
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|1[0-4])\$[./A-Za-z0-9]{53}$")


def new_key() -> str:
    """A fresh random key (shown once; never stored)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(value: str) -> bool:
    """Whether ``value`` has a key's form (prefix, alphabet, length)."""
    return _KEY.fullmatch(value) is not None


def hash_key(key: str) -> str:
    """The SHA-256 of a key, as the log records it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_for(key_hash: str) -> str:
    """The key's id: ``key`` and 17 base32 characters of a hash of its hash (a subject token)."""
    digest = hashlib.sha256(b"sandboxer-key-id:" + key_hash.encode()).digest()
    return "key" + base64.b32encode(digest).decode().lower()[:17]


def is_valid_key_hash(value: object) -> bool:
    return isinstance(value, str) and _HASH.fullmatch(value) is not None


def is_valid_bus_hash(value: object) -> bool:
    """A bcrypt hash (cost 4 to 14) as nats-server checks passwords with."""
    return isinstance(value, str) and _BCRYPT.fullmatch(value) is not None


def is_valid_key_id(value: object) -> bool:
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


class KeyState(msgspec.Struct, frozen=True, kw_only=True):
    """What the log says about one key."""

    key_id: str
    version: int = 0
    status: Literal["none", "active", "revoked"] = "none"
    key_hash: str | None = None
    project: str | None = None
    key_type: Literal["adm", "agt", "atm"] | None = None
    name: str | None = None
    max_live: int = DEFAULT_MAX_LIVE
    rate_per_second: int = DEFAULT_RATE_PER_SECOND
    bus_hash: str | None = None
    created_at: str | None = None
    created_by: Actor | None = None
    revoked_at: str | None = None
    revoked_by: Actor | None = None
    handled: tuple[str, ...] = ()
    """Ids of the commands already decided, so a re-sent one decides nothing."""

    @property
    def actor(self) -> Actor | None:
        """Who a request bearing this key acts as; None unless the key is active."""
        if self.status != "active" or self.key_type is None:
            return None
        return Actor(type=self.key_type, id=self.key_id, project=self.project)


def evolve_key(state: KeyState, event: KeyEvent) -> KeyState:
    """The state after ``event``. Total: an event that does not apply leaves it as it is."""
    replace = msgspec.structs.replace
    base = replace(
        state,
        version=state.version + 1,
        handled=state.handled
        if event.command_id in state.handled
        else (*state.handled, event.command_id),
    )
    match event:
        case KeyCreated():
            if state.status != "none":
                return base
            return replace(
                base,
                status="active",
                key_hash=event.key_hash,
                project=event.project,
                key_type=event.key_type,
                name=event.name,
                max_live=event.max_live,
                rate_per_second=event.rate_per_second,
                bus_hash=event.bus_hash,
                created_at=event.at,
                created_by=event.actor,
            )
        case KeyRevoked():
            return replace(base, status="revoked", revoked_at=event.at, revoked_by=event.actor)
    return base


def fold_key(key_id: str, events: list[KeyEvent]) -> KeyState:
    state = KeyState(key_id=key_id)
    for event in events:
        state = evolve_key(state, event)
    return state

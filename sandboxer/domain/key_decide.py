"""The API key aggregate's rules: ``decide_key(state, command, now) -> events``. Pure.

Only an administrator (actor type ``adm``) creates or revokes keys. A key is
created once (its id is derived from its hash, so the same key twice is the
same aggregate) and revoked once; a command already decided decides nothing.
:func:`key_command_refusal` holds the checks a field's type cannot express,
which the command parser applies before any deciding.
"""

from __future__ import annotations

from typing import Any

from sandboxer.commands.types import Command, CreateKey, RevokeKey
from sandboxer.domain.account_state import PROJECT_RULE, is_valid_project
from sandboxer.domain.key_state import (
    KeyState,
    is_valid_bus_hash,
    is_valid_key_hash,
    is_valid_key_id,
    key_id_for,
)
from sandboxer.errors import Rejected
from sandboxer.events.key_events import KeyCreated, KeyEvent, KeyRevoked

__all__ = [
    "MAX_KEY_NAME",
    "MAX_LIVE_LIMIT",
    "MAX_RATE_LIMIT",
    "KeyCommand",
    "decide_key",
    "key_command_refusal",
    "key_id_of",
]

MAX_KEY_NAME = 100
MAX_LIVE_LIMIT = 10_000
MAX_RATE_LIMIT = 10_000
MAX_REVOKE_REASON = 500

KeyCommand = CreateKey | RevokeKey


def key_id_of(command: KeyCommand) -> str:
    """The key aggregate a command is about."""
    return key_id_for(command.key_hash) if isinstance(command, CreateKey) else command.key_id


def _label_ok(text: str | None, limit: int) -> bool:
    return text is None or (0 < len(text) <= limit and text.isprintable())


def key_command_refusal(command: Command) -> tuple[str, str] | None:
    """``(code, reason)`` when a key command's fields are unacceptable; None otherwise
    (and for every other command)."""
    if isinstance(command, CreateKey):
        if not is_valid_project(command.project):
            return "invalid_project", (
                f"project {command.project[:100]!r} is invalid: use {PROJECT_RULE}"
            )
        if not is_valid_key_hash(command.key_hash):
            return "invalid_field", (
                "key_hash must be the SHA-256 of the key as 64 lowercase hex digits (never the "
                "key itself)"
            )
        if command.bus_hash is not None and not is_valid_bus_hash(command.bus_hash):
            return "invalid_field", (
                "bus_hash must be a bcrypt hash of the key ($2b$, cost 04 to 14), never the key"
            )
        if not _label_ok(command.name, MAX_KEY_NAME):
            return "invalid_field", f"name must be 1 to {MAX_KEY_NAME} printable characters"
        if not 0 <= command.max_live <= MAX_LIVE_LIMIT:
            return "invalid_amount", (
                f"max_live {command.max_live} must be a whole number from 0 to {MAX_LIVE_LIMIT}"
            )
        if not 1 <= command.rate_per_second <= MAX_RATE_LIMIT:
            return "invalid_amount", (
                f"rate_per_second {command.rate_per_second} must be a whole number from 1 to "
                f"{MAX_RATE_LIMIT}"
            )
    if isinstance(command, RevokeKey):
        if not is_valid_key_id(command.key_id):
            return "invalid_id", (
                f"key_id {command.key_id[:100]!r} is not a key id ('key' and 17 lowercase "
                "letters or digits 2-7, as 'sandboxer keys list' shows)"
            )
        if not _label_ok(command.reason, MAX_REVOKE_REASON):
            return "invalid_field", (
                f"reason must be 1 to {MAX_REVOKE_REASON} printable characters"
            )
    return None


def decide_key(state: KeyState, command: KeyCommand, now: str) -> list[KeyEvent]:
    """The events ``command`` produces in ``state``; raises Rejected when it is not acceptable."""
    if command.command_id in state.handled:
        return []
    actor = command.actor
    if actor.type != "adm":
        raise Rejected(
            "forbidden",
            f"only an administrator (actor type adm) may create or revoke API keys; "
            f"{actor.type} {actor.id} may not",
        )
    head: dict[str, Any] = {
        "key_id": state.key_id,
        "command_id": command.command_id,
        "actor": actor,
        "at": now,
    }
    match command:
        case CreateKey():
            if state.status != "none":
                raise Rejected("key_exists", f"key {state.key_id} exists already")
            return [
                KeyCreated(
                    **head,
                    key_hash=command.key_hash,
                    project=command.project,
                    key_type=command.key_type,
                    name=command.name,
                    max_live=command.max_live,
                    rate_per_second=command.rate_per_second,
                    bus_hash=command.bus_hash,
                )
            ]
        case RevokeKey():
            if state.status == "none":
                raise Rejected("unknown_key", f"no key {state.key_id}")
            if state.status == "revoked":
                raise Rejected("already_revoked", f"key {state.key_id} is revoked already")
            return [KeyRevoked(**head, reason=command.reason)]

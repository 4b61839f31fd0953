"""Who asks to reach a sandbox (exec, files, tokens): the trusted identities, or an API key.

Requests arrive on ``sandboxer.<kind>.<sandbox id>`` from the client identity,
or on ``sandboxer.<kind>.<sandbox id>.<key id>`` from an API key's identity,
which only that key may publish (docs/security.md#keys-on-the-bus). A key
reaches only its own project's sandboxes (an ``adm`` key: any); for any other
the worker stays silent, exactly as for a sandbox that does not exist.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxer.bus.event_store import EventStore
from sandboxer.domain.key_access import may_see, project_of_actor
from sandboxer.domain.key_state import is_valid_key_id
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.ids import is_valid_sandbox_id

__all__ = ["key_actor", "reach_target", "subscriptions"]


def subscriptions(kind: str) -> tuple[str, str]:
    """The subjects a service of ``kind`` (exec, files, token) listens on."""
    return f"sandboxer.{kind}.*", f"sandboxer.{kind}.*.*"


def reach_target(subject: str) -> tuple[str, str | None] | None:
    """``(sandbox id, key id or None)`` of a request subject; None when it is malformed."""
    parts = subject.split(".")
    if len(parts) not in {3, 4} or not is_valid_sandbox_id(parts[2]):
        return None
    key_id = parts[3] if len(parts) == 4 else None
    if key_id is not None and not is_valid_key_id(key_id):
        return None
    return parts[2], key_id


async def key_actor(store: EventStore, key_id: str, state: SandboxState) -> dict[str, Any] | None:
    """The actor of key ``key_id`` when it is active and may reach the sandbox ``state``;
    None otherwise (a revoked key, another project's sandbox)."""
    actor = (await store.load_key(key_id)).state.actor
    if actor is None:
        return None
    plain: dict[str, Any] = msgspec.to_builtins(actor)
    owner = project_of_actor(msgspec.to_builtins(state.actor)) if state.actor else None
    return plain if may_see(plain, owner) else None

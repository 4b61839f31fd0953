"""Whether a command a key identity published may be decided: its actor and its target.

A key identity (docs/security.md#keys-on-the-bus) publishes commands on
``sandboxer.cmd.<verb>.<key id>``, a subject nats-server lets only that key
publish. The control worker asks :func:`bus_identity_refusal` before deciding:
the command's actor must be the key's own (a revoked key is refused at once),
and an ``agt`` or ``atm`` key may act only on its own project's sandboxes,
snapshots and account. Commands on the plain subjects come from the trusted
client and service identities and are decided as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxer.bus.event_store import EventStore
from sandboxer.commands.parse import key_of
from sandboxer.commands.types import Command, CreateSandbox, DeleteSnapshot, RestoreSnapshot
from sandboxer.domain.key_access import (
    find_snapshot_owner,
    identity_refusal,
    is_admin,
    may_see,
    owner_refusal,
    project_of_actor,
    scope_of,
)

__all__ = ["bus_identity_refusal"]


def _plain(value: msgspec.Struct) -> dict[str, Any]:
    """An actor or a state as JSON, as the rules of ``domain/key_access`` take them."""
    plain: dict[str, Any] = msgspec.to_builtins(value)
    return plain


async def bus_identity_refusal(
    store: EventStore, subject: str, command: Command
) -> tuple[str, str] | None:
    """``(code, reason)`` when the key identity that published ``command`` on ``subject`` may
    not; None when it may, or when ``subject`` is not a key identity's."""
    key_id = key_of(subject)
    if key_id is None:
        return None
    key_actor = (await store.load_key(key_id)).state.actor
    actor = _plain(command.actor)
    refusal = identity_refusal(key_id, _plain(key_actor) if key_actor else None, actor)
    if refusal is not None or is_admin(actor):
        return refusal
    if isinstance(command, DeleteSnapshot | RestoreSnapshot):
        snapshot = (await store.load_snapshot(command.snapshot_id)).state
        owner = None
        if snapshot.status != "new":

            async def read_sandbox(sandbox_id: str) -> dict[str, Any]:
                return _plain((await store.load(sandbox_id)).state)

            owner = await find_snapshot_owner(_plain(snapshot), read_sandbox)
        return owner_refusal(actor, owner, "snapshot", command.snapshot_id)
    project = getattr(command, "project", None)
    if isinstance(project, str) and not may_see(actor, project):
        return "forbidden", (
            f"a {actor['type']} key acts for project {scope_of(actor)} only, not for {project}"
        )
    sandbox_id = getattr(command, "sandbox_id", None)
    if isinstance(command, CreateSandbox) or not isinstance(sandbox_id, str):
        return None
    created_by = (await store.load(sandbox_id)).state.actor
    owner = project_of_actor(_plain(created_by)) if created_by else None
    return owner_refusal(actor, owner, "sandbox", sandbox_id)

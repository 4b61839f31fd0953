"""Whether a command a key identity published may be decided: its actor and its target.

A key identity (docs/security.md#keys-on-the-bus) publishes commands on
``sandboxer.cmd.<verb>.<key id>``, a subject nats-server lets only that key
publish. The control worker asks :func:`bus_identity_refusal` before deciding:
the command's actor must be the key's own (a revoked key is refused at once),
and an ``agt`` or ``atm`` key may act only on its own project's sandboxes,
snapshots and account. Commands on the plain subjects come from the trusted
client and service identities and are decided as they are.

A create or restore names the sandbox it makes (its ``sandbox_id``, else one derived from
its ``command_id``, both the client's choice), and sandbox ids are one namespace across
projects. One naming another project's sandbox is refused as any create of a taken id is
(:func:`~sandboxer.domain.key_access.taken_refusal`), whatever its ``command_id``: decided
as it came, one carrying the command id of that project's own create would be taken for it
sent again (deciding a command once), answered with nothing, and its job sent again.

What a refused create held is given back under its actor only when :func:`vouches_for` it:
the actor is the key's own, revoked since or not (control.py, ``_give_up_create``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sandboxer.bus.event_store import EventStore
from sandboxer.commands.parse import key_of
from sandboxer.commands.types import (
    Command,
    CreateSandbox,
    DeleteSnapshot,
    RestoreSnapshot,
    target_sandbox,
)
from sandboxer.domain.key_access import (
    find_snapshot_owner,
    identity_refusal,
    is_admin,
    may_see,
    owner_refusal,
    project_of_actor,
    scope_of,
    taken_refusal,
)
from sandboxer.events.actor import Actor

__all__ = ["bus_identity_refusal", "vouches_for"]


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
        refusal = owner_refusal(actor, owner, "snapshot", command.snapshot_id)
        if refusal is not None or isinstance(command, DeleteSnapshot):
            return refusal
    project = getattr(command, "project", None)
    if isinstance(project, str) and not may_see(actor, project):
        return "forbidden", (
            f"a {actor['type']} key acts for project {scope_of(actor)} only, not for {project}"
        )
    if isinstance(command, CreateSandbox | RestoreSnapshot):
        made = target_sandbox(command)
        if await _owner(store, made) in (None, scope_of(actor)):
            return None  # free, or the key's project's own: decided as it comes
        return taken_refusal(made)
    sandbox_id = getattr(command, "sandbox_id", None)
    if not isinstance(sandbox_id, str):
        return None
    return owner_refusal(actor, await _owner(store, sandbox_id), "sandbox", sandbox_id)


async def vouches_for(store: EventStore, subject: str, command: Command) -> bool:
    """Whether ``command``'s actor is one its publisher may claim, so that what it names
    under that actor (a hold, a host's place, a sandbox id) may be given back for it.

    On the plain subjects every actor is (the trusted client and services stamp it). On a
    key's subject only the key's own, revoked since or not: a create held credits under its
    key's actor and was cut off before its append; its key revoked meanwhile, it is refused
    ``key_revoked`` at every delivery, and only it can give the hold back. One claiming
    another actor is not that actor's, whatever command id it copied: given back under the
    claimed actor, another project's create in flight would be given up and its hold
    released by a command that project never sent.
    """
    key_id = key_of(subject)
    if key_id is None:
        return True
    key = (await store.load_key(key_id)).state
    if key.key_type is None:
        return False  # no such key: it never held anything
    issued = Actor(type=key.key_type, id=key.key_id, project=key.project)
    return identity_refusal(key_id, _plain(issued), _plain(command.actor)) is None


async def _owner(store: EventStore, sandbox_id: str) -> str | None:
    """The project of the sandbox ``sandbox_id`` (its creator's); None when there is none."""
    created_by = (await store.load(sandbox_id)).state.actor
    return project_of_actor(_plain(created_by)) if created_by else None

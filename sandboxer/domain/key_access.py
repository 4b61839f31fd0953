"""Who may see and act on what, by the actor a key stamps (pure; docs/http-api.md#scoping).

An administrator (``adm``) sees everything. An agent (``agt``) or an
automation (``atm``) sees its own project only: its sandboxes (those whose
creating actor names the project), their snapshots, the project's account and
usage, and the events of all of these. Anything else does not exist for it: a
request for another project's sandbox is answered as for an unknown one, so
its existence is not revealed.

Every gateway route asks these functions; none decides on its own. On the bus,
the control worker asks :func:`identity_refusal` and :func:`owner_refusal` for
each command a key identity publishes (docs/security.md#keys-on-the-bus), and
:func:`live_limit_refusal` for each create or restore a key makes, however it
came (the gateway asks it too, before it publishes one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, get_args

import msgspec

from sandboxer.domain.account_state import DEFAULT_PROJECT
from sandboxer.domain.sandbox_state import SandboxState, Status

__all__ = [
    "ACCOUNT_EVENT_TYPES",
    "KEY_LIVE_STATUSES",
    "create_project",
    "event_owner",
    "find_snapshot_owner",
    "identity_refusal",
    "is_admin",
    "live_limit_refusal",
    "may_see",
    "owned_through",
    "owner_of",
    "owner_refusal",
    "project_of_actor",
    "sandbox_project",
    "scope_of",
    "snapshot_owner",
    "taken_refusal",
]


def is_admin(actor: Mapping[str, Any]) -> bool:
    return actor.get("type") == "adm"


def scope_of(actor: Mapping[str, Any]) -> str | None:
    """The one project ``actor`` is confined to; None for an administrator (no confinement)."""
    if is_admin(actor):
        return None
    project = actor.get("project")
    return project if isinstance(project, str) and project else DEFAULT_PROJECT


def _project_of(who: object) -> str:
    """The project an actor (as JSON) belongs to: its own, or ``default`` when it names none."""
    project = who.get("project") if isinstance(who, Mapping) else None
    return project if isinstance(project, str) and project else DEFAULT_PROJECT


def project_of_actor(actor: Mapping[str, Any]) -> str:
    """The project an actor's work belongs to (and is paid from): its own, or ``default``."""
    return _project_of(actor)


def owner_of(resource: Mapping[str, Any]) -> str:
    """The project a sandbox (as queries return it) belongs to: its creator's. A snapshot's
    is :func:`snapshot_owner`."""
    return _project_of(resource.get("actor"))


def snapshot_owner(snapshot: Mapping[str, Any], sandbox: Mapping[str, Any] | None) -> str:
    """The project a snapshot (as queries return it) belongs to: its sandbox's, whoever took
    it (an administrator may snapshot any project's sandbox, and the snapshot stays that
    project's). As ``snapshot_requested`` recorded it; for a snapshot recorded before that,
    as ``sandbox`` (its sandbox, when known) says; the taker's only when neither is known."""
    project = snapshot.get("project")
    if isinstance(project, str) and project:
        return project
    return owner_of(sandbox if sandbox is not None else snapshot)


def sandbox_project(state: SandboxState) -> str | None:
    """The project a sandbox (as its state) belongs to: its creator's, or ``default`` when the
    creator names none (docs/payments.md#accounts), as :func:`owner_of` says of one a query
    returns; None when it names no creator (administrators only)."""
    return None if state.actor is None else _project_of(msgspec.to_builtins(state.actor))


SandboxReader = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""Reads a sandbox (as queries return it) by id; None when there is no such sandbox."""


async def find_snapshot_owner(snapshot: Mapping[str, Any], read_sandbox: SandboxReader) -> str:
    """:func:`snapshot_owner`, reading the snapshot's sandbox only when the rule needs it (a
    snapshot recorded before its project was). The one path of the gateway and of the bus:
    each passes its own way to read a sandbox (a query, the view, the log)."""
    sandbox_id = snapshot.get("sandbox_id")
    sandbox = None
    if not snapshot.get("project") and isinstance(sandbox_id, str):
        sandbox = await read_sandbox(sandbox_id)
    return snapshot_owner(snapshot, sandbox)


def may_see(actor: Mapping[str, Any], project: str | None) -> bool:
    """Whether ``actor`` may see and act on what belongs to ``project`` (None: to no project,
    such as a host or a key: administrators only)."""
    scope = scope_of(actor)
    return scope is None or (project is not None and project == scope)


def create_project(actor: Mapping[str, Any], asked: str | None) -> tuple[str | None, str | None]:
    """``(project, refusal)`` for a create or restore that asks for ``asked``: an administrator
    may pay from any project; any other actor only from its own (asking for it is allowed)."""
    if asked is None or is_admin(actor):
        return asked, None
    scope = scope_of(actor)
    if asked != scope:
        return None, (
            f"a {actor.get('type')} key acts for project {scope} only; it cannot create in "
            f"project {asked}"
        )
    return asked, None


def identity_refusal(
    key_id: str, key_actor: Mapping[str, Any] | None, actor: Mapping[str, Any]
) -> tuple[str, str] | None:
    """``(code, reason)`` when a command a key identity published claims another actor than
    the key's (``key_actor``: None when the key is unknown or revoked); None when it matches."""
    if key_actor is None:
        return "key_revoked", (
            f"key {key_id} is revoked or unknown: its commands are refused; ask an "
            "administrator for a new key ('sandboxer keys create')"
        )
    fields = ("type", "id", "project")
    if any(actor.get(name) != key_actor.get(name) for name in fields):
        claimed = "/".join(str(actor.get(name)) for name in fields)
        own = "/".join(str(key_actor.get(name)) for name in fields)
        return "actor_mismatch", (
            f"the command's actor {claimed} (type/id/project) is not key {key_id}'s own "
            f"{own}: a key acts only as itself; leave the actor to the client library"
        )
    return None


def owner_refusal(
    actor: Mapping[str, Any], owner: str | None, what: str, ident: str
) -> tuple[str, str] | None:
    """``(code, reason)`` when ``actor`` may not act on the ``what`` (``sandbox``, ``snapshot``)
    ``ident`` owned by project ``owner``: answered as for one that does not exist, so that
    another project's sandboxes are not revealed."""
    if owner is None or may_see(actor, owner):
        return None
    return f"unknown_{what}", f"no {what} {ident}; 'sandboxer list' shows the existing ones"


def taken_refusal(sandbox_id: str) -> tuple[str, str]:
    """``(code, reason)`` of a create or restore naming a sandbox id that exists: sandbox ids
    are one namespace across projects, so a taken id is told as taken, whoever's it is, and
    nothing more (not whose, nor its state): the rejection deciding gives a create on an
    existing sandbox (``sandbox_decide``) too, so a key's refusal before deciding reads the
    same."""
    return "sandbox_exists", (
        f"sandbox id {sandbox_id} is taken; "
        "choose another sandbox_id or omit it to have one assigned"
    )


KEY_LIVE_STATUSES = frozenset(get_args(Status)) - {"new", "destroyed", "failed"}
"""The sandboxes a project's key counts against its ``max_live``: every one neither destroyed
nor failed (a paused, expired or destroying one still counts; docs/http-api.md#limits)."""


def live_limit_refusal(
    key_id: str, max_live: int, project: str, live: int | None
) -> tuple[str, str] | None:
    """``(code, reason)`` when a create or restore by key ``key_id`` may not add a sandbox to
    ``project``, which has ``live`` of :data:`KEY_LIVE_STATUSES` (None: they could not be
    counted, and a limit that cannot be checked does not let the create through)."""
    if live is None:  # the service is degraded, the project not full: its own code
        return "live_count_unavailable", (
            f"the live sandboxes of project {project} could not be counted (the view is older "
            f"than the control worker: upgrade the projector), so key {key_id}'s limit of "
            f"{max_live} cannot be checked"
        )
    if live < max_live:
        return None
    return "live_limit", (
        f"project {project} has {live} live sandboxes; key {key_id} allows {max_live}. "
        "Destroy one, or ask an administrator for a key with a higher --max-live"
    )


ACCOUNT_EVENT_TYPES = frozenset(
    {
        "credits_added",
        "credits_reserved",
        "credits_released",
        "usage_metered",
        "budget_set",
        "byok_set",
    }
)


def owned_through(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """``("sandbox", id)`` or ``("snapshot", id)`` when the event belongs to whoever owns that
    sandbox or snapshot (the caller looks the owner up); None when the event says its owner
    itself (see :func:`event_owner`)."""
    kind = event.get("type")
    if kind == "rejected" or kind in ACCOUNT_EVENT_TYPES:
        return None
    sandbox_id = event.get("sandbox_id")
    if isinstance(sandbox_id, str):
        return "sandbox", sandbox_id
    snapshot_id = event.get("snapshot_id")
    if isinstance(snapshot_id, str):
        return "snapshot", snapshot_id
    return None


def event_owner(event: Mapping[str, Any], owner: str | None = None) -> str | None:
    """The project an event of the log belongs to. ``owner`` is the project of the sandbox or
    snapshot it is about (:func:`owned_through`), looked up by the caller. None: the event
    belongs to no project (hosts, keys, an unknown owner), and only administrators see it."""
    kind = event.get("type")
    if kind == "rejected":
        return _project_of(event.get("actor"))  # the rejected actor's own command
    if kind in ACCOUNT_EVENT_TYPES:
        project = event.get("project")
        return project if isinstance(project, str) else None
    if owned_through(event) is not None:
        return owner
    return None

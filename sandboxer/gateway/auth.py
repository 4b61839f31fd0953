"""API keys at the gateway: who a request is, and how fast it may go (docs/http-api.md#keys).

:class:`KeyLookup` turns a bearer key into the key's state by reading the key's
own history from the log (``sandboxer.evt.key.<key_id>.>``, one batched direct
get: the id is derived from the key's hash). Nothing is cached, so a revoked
key is refused from the very next request, on every gateway.

Each key's requests are held to its ``rate_per_second`` by a token bucket in
this gateway process (:class:`sandboxer.domain.rate_limit.RateLimiter`, the one
the control worker holds a key's bus commands with): with N gateways behind a
balancer a key may reach N times its rate.

:class:`Owners` finds which project a sandbox or snapshot belongs to, for the
event streams of keys confined to one project.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import HTTPException
from nats.aio.client import Client as Nats

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.client import SandboxerClient
from sandboxer.domain.key_access import (
    create_project,
    event_owner,
    find_snapshot_owner,
    live_limit_refusal,
    may_see,
    owned_through,
    owner_of,
    project_of_actor,
    scope_of,
)
from sandboxer.domain.key_state import (
    MAX_KEY_CHARS,
    KeyState,
    evolve_key,
    hash_key,
    key_id_for,
    looks_like_key,
)
from sandboxer.errors import CommandFailed, Rejected
from sandboxer.events.codec import UnknownEventType, decode_event
from sandboxer.events.key_events import KEY_EVENTS

__all__ = [
    "KeyLookup",
    "Owners",
    "admit_create",
    "bearer_key",
    "event_visibility",
    "own_failure",
    "require_project",
    "require_sandbox",
    "require_snapshot",
    "snapshot_owner",
    "visible_sandbox",
    "visible_snapshot",
    "visible_snapshots",
]


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header; None for anything else (no
    header, another scheme, a value that is not one of our keys)."""
    if authorization is None or len(authorization) > MAX_KEY_CHARS + 16:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not looks_like_key(key):
        return None
    return key


class KeyLookup:
    """A key's state from the log itself (never from a cache or the view, which may lag)."""

    def __init__(self, nc: Nats) -> None:
        self._nc = nc

    async def active(self, key: str) -> KeyState | None:
        """The key's state when it exists, matches and is not revoked; None otherwise."""
        key_hash = hash_key(key)
        state = KeyState(key_id=key_id_for(key_hash))
        async for _seq, data in read_subject(self._nc, subjects.key_events_filter(state.key_id)):
            try:
                event = decode_event(data)
            except UnknownEventType:
                continue
            if isinstance(event, KEY_EVENTS):
                state = evolve_key(state, event)
        if state.status != "active" or state.key_hash != key_hash:
            return None
        return state


class Owners:
    """Which project each sandbox or snapshot of an event stream belongs to (looked up once
    per stream through the view; learned from ``requested`` events as they pass)."""

    def __init__(self, client: SandboxerClient) -> None:
        self._client = client
        self._known: dict[tuple[str, str], str | None] = {}

    async def owner(self, event: Mapping[str, Any], seq: int) -> str | None:
        """The project of the sandbox or snapshot ``event`` (at sequence ``seq`` of the log) is
        about (None: not about one, or one the view does not know once it has folded ``seq``:
        read from the stream, an event can come before the projector has folded its sandbox,
        and an owner not yet known would hide the sandbox's events for the stream's life)."""
        about = owned_through(event)
        if about is None:
            return None
        if about not in self._known:
            if about[0] == "sandbox" and event.get("type") == "requested":
                found: Mapping[str, Any] | None = event
            elif about[0] == "sandbox":
                found = await self._client.get(about[1], min_seq=seq)
            else:
                snapshot = await self._client.snapshot_get(about[1], min_seq=seq)
                found = None
                if snapshot is not None:
                    self._known[about] = await snapshot_owner(self._client, snapshot)
                    return self._known[about]
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[about] = None if found is None else owner_of(found)
        return self._known[about]


async def snapshot_owner(client: SandboxerClient, snapshot: Mapping[str, Any]) -> str:
    """A snapshot belongs to the project of the sandbox it was taken of, whoever took it
    (key_access.find_snapshot_owner, its sandbox read through the view)."""
    return await find_snapshot_owner(snapshot, client.get)


async def visible_sandbox(client: SandboxerClient, sandbox_id: str) -> dict[str, Any] | None:
    """The sandbox when the client's actor may see it (key_access.may_see); None otherwise,
    whether it exists or not."""
    sandbox = await client.get(sandbox_id)
    if sandbox is None or not may_see(client.actor, owner_of(sandbox)):
        return None
    return sandbox


async def visible_snapshot(client: SandboxerClient, snapshot_id: str) -> dict[str, Any] | None:
    """The snapshot when the client's actor may see it; None otherwise."""
    snapshot = await client.snapshot_get(snapshot_id)
    if snapshot is None or not may_see(client.actor, await snapshot_owner(client, snapshot)):
        return None
    return snapshot


# -- what the routes call (one rule: sandboxer.domain.key_access) -------------------------------


def _hidden(kind: str, ident: str) -> HTTPException:
    """What a confined key hears about something of another project: that it does not exist."""
    return HTTPException(404, {"code": f"unknown_{kind}", "message": f"no {kind} {ident}"})


def _taken() -> HTTPException:
    return HTTPException(
        409,
        {
            "code": "idempotency_key_taken",
            "message": "this Idempotency-Key already names another caller's command; "
            "choose another (a fresh UUID, say)",
        },
    )


async def own_sandbox(client: SandboxerClient, sandbox_id: str) -> dict[str, Any] | None:
    """The sandbox a create or a restore of this caller made (None until it exists). A
    sandbox's id comes from its command id, which is global: an Idempotency-Key another
    project used names that project's sandbox, and its create's outcome. 409 then, with
    nothing of it shown."""
    sandbox = await client.get(sandbox_id)
    if sandbox is not None and not may_see(client.actor, owner_of(sandbox)):
        raise _taken()
    return sandbox


async def own_snapshot(client: SandboxerClient, snapshot: Mapping[str, Any]) -> None:
    """As :func:`own_sandbox`, for the snapshot a snapshot command of this caller made."""
    if not may_see(client.actor, await snapshot_owner(client, snapshot)):
        raise _taken()


async def own_failure(client: SandboxerClient, failed: CommandFailed, sandbox_id: str) -> bool:
    """Whether the failure a create or restore met within ``?wait=`` may be answered (False:
    answer 202, its status URL tells). Its sandbox's id comes from the command id, which
    another project may have used: the wait then hears that sandbox's failure or expiry.
    409 when the view shows the sandbox is another's (:func:`own_sandbox`); False when the
    view does not show it yet, so whose it is cannot be told. A rejection is the caller's
    own already (the outcome watcher takes only those filed under its actor)."""
    if failed.event.get("type") == "rejected":
        return True
    return await own_sandbox(client, sandbox_id) is not None


async def require_sandbox(client: SandboxerClient, sandbox_id: str) -> None:
    """404 (as for an unknown sandbox) unless the client's actor may act on ``sandbox_id``.
    An administrator is never refused here: the service answers for unknown sandboxes."""
    if scope_of(client.actor) is not None and await visible_sandbox(client, sandbox_id) is None:
        raise _hidden("sandbox", sandbox_id)


async def require_snapshot(client: SandboxerClient, snapshot_id: str) -> None:
    """As :func:`require_sandbox`, for a snapshot (it belongs to its sandbox's project)."""
    if scope_of(client.actor) is not None and await visible_snapshot(client, snapshot_id) is None:
        raise _hidden("snapshot", snapshot_id)


def require_project(client: SandboxerClient, project: str, kind: str = "account") -> None:
    """404 unless the client's actor may see ``project``'s account, usage or events."""
    if not may_see(client.actor, project):
        raise HTTPException(
            404, {"code": f"unknown_{kind}", "message": f"project {project} has no {kind}"}
        )


async def admit_create(client: SandboxerClient, key: KeyState, asked: str | None) -> None:
    """Before a create or restore: the project it is paid from (a confined key's own only;
    403 otherwise) becomes the client's actor's, and the project must be under the key's
    ``max_live`` (otherwise Rejected ``live_limit``, a 429 with Retry-After; or
    ``live_count_unavailable``, a 503, from a view too old to count).

    The control worker holds every key's create to the same rule (key_access, its
    ``live_limit`` rejection answers the same 429). This check stays as the fast path: a
    create answered 202 before the control worker decides would otherwise be accepted here
    and refused only in its status. Its count is the view's (the one the control worker
    asks for, one count however many the project has, without the routes the worker
    holds), read after this gateway's own writes, so a create right after this key's
    destroy is not refused for it."""
    project, refusal = create_project(client.actor, asked)
    if refusal is not None:
        raise HTTPException(403, {"code": "forbidden", "message": refusal})
    if project is not None:
        client.actor = {**client.actor, "project": project}
    owner = project_of_actor(client.actor)
    over = live_limit_refusal(key.key_id, key.max_live, owner, await client.live_count(owner))
    if over is not None:  # answered as the control worker's rejection would be (errors.py)
        raise Rejected(*over)


async def visible_snapshots(
    client: SandboxerClient, snapshots: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The snapshots the client's actor may see (all of them for an administrator)."""
    if scope_of(client.actor) is None:
        return snapshots
    owners: dict[str, bool] = {}
    shown = []
    for snapshot in snapshots:
        sandbox_id = str(snapshot.get("sandbox_id"))
        if sandbox_id not in owners:
            owners[sandbox_id] = may_see(client.actor, await snapshot_owner(client, snapshot))
        if owners[sandbox_id]:
            shown.append(snapshot)
    return shown


def event_visibility(
    client: SandboxerClient,
) -> Callable[[Mapping[str, Any], int], Awaitable[bool]] | None:
    """For an event stream: whether the client's actor may see each event, given with its
    sequence in the log (None: all)."""
    if scope_of(client.actor) is None:
        return None
    owners = Owners(client)

    async def visible(event: Mapping[str, Any], seq: int) -> bool:
        owner = await owners.owner(event, seq) if owned_through(event) is not None else None
        return may_see(client.actor, event_owner(event, owner))

    return visible

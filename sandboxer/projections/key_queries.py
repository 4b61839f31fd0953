"""The projector's answers to key identities: the same queries, narrowed to the key's project.

A key identity (docs/security.md#keys-on-the-bus) asks on ``<query subject>.<key
id>``, which only it may publish. Each answer here is the plain query's, then
narrowed by :mod:`sandboxer.domain.key_access` exactly as the HTTP gateway
narrows it: another project's sandbox, snapshot, rejection or account is
answered as for one that does not exist. Each request takes a token of the
key's rate first (:mod:`sandboxer.bus.key_request_rate`): one past it is
answered ``rate_limited`` before anything is read.

A key identity may not read the events stream, so it follows its own sandboxes
with ``sandbox.events``: a page of one sandbox's events (or of one command's
rejection) after a stream sequence, read from the log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.key_request_rate import KeyRequestRates
from sandboxer.bus.responder import Handler, ScopedHandler
from sandboxer.domain.key_access import (
    event_owner,
    find_snapshot_owner,
    may_see,
    owner_of,
    scope_of,
)
from sandboxer.domain.key_state import KeyState, is_valid_key_id
from sandboxer.errors import RequestError
from sandboxer.ids import is_valid_command_id, is_valid_sandbox_id
from sandboxer.pagination import page_limit
from sandboxer.projections.key_rows import load_key
from sandboxer.projections.projector import Projector

__all__ = ["MAX_EVENTS_PAGE", "KeyQueries"]

MAX_EVENTS_PAGE = 500


class KeyQueries:
    """Serves the scoped variant of each query a key identity may ask (see the module)."""

    def __init__(
        self,
        nc: Client,
        projector: Projector,
        plain: dict[str, Handler],
        rates: KeyRequestRates,
    ) -> None:
        self._nc = nc
        self._projector = projector
        self._plain = plain
        self._rates = rates

    def routes(self) -> dict[str, ScopedHandler]:
        """The scoped queries, for :meth:`Responder.serve` with :meth:`resolve`."""
        return {
            subjects.QUERY_GET: self._get,
            subjects.QUERY_LIST: self._list,
            subjects.QUERY_REJECTION: self._rejection,
            subjects.QUERY_SNAPSHOT_GET: self._snapshot_get,
            subjects.QUERY_SNAPSHOT_LIST: self._snapshot_list,
            subjects.QUERY_CREDITS_GET: self._credits_get,
            subjects.QUERY_USAGE_LIST: self._usage_list,
            subjects.QUERY_SANDBOX_EVENTS: self._sandbox_events,
            subjects.QUERY_KEY_WHOAMI: self._whoami,
        }

    async def resolve(self, key_id: str) -> dict[str, Any]:
        """The actor of an active key; a revoked one is refused at once. A request past the
        key's rate is refused first, before the view is read (bus/key_request_rate.py)."""
        await self._rates.hold(key_id, self._load_key)
        state = await self._load_key(key_id) if is_valid_key_id(key_id) else None
        actor = state.actor if state is not None else None
        if actor is None:
            raise RequestError(f"key {key_id} is revoked or unknown")
        plain: dict[str, Any] = msgspec.to_builtins(actor)
        return plain

    async def _load_key(self, key_id: str) -> KeyState | None:
        """The key as the view has it; a key the view has not folded yet is looked for in
        the log, and the view waited for (its while) up to the key's last event. A key made a
        moment ago and handed straight to an agent would otherwise be refused as unknown."""
        assert self._projector.view is not None
        state = await load_key(self._projector.view.db, key_id)
        if state is not None and state.status != "none":
            return state
        logged = 0
        async for seq, _ in read_subject(self._nc, subjects.key_events_filter(key_id)):
            logged = seq
        if logged <= self._projector.position or not await self._projector.wait_for(logged):
            return state
        return await load_key(self._projector.view.db, key_id)

    def _ask(self, subject: str) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        return self._plain[subject]

    async def _get(self, request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        reply = await self._ask(subjects.QUERY_GET)(request)
        found = reply.get("sandbox")
        if found is not None and not may_see(actor, owner_of(found)):
            reply["sandbox"] = None
        return reply

    async def _list(self, request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        limit = page_limit(request)
        reply = await self._ask(subjects.QUERY_LIST)(self._narrowed(request, actor, limit))
        mine = [s for s in reply["sandboxes"] if may_see(actor, owner_of(s))]
        return {**reply, "sandboxes": mine[:limit]}

    @staticmethod
    def _narrowed(request: dict[str, Any], actor: dict[str, Any], limit: int) -> dict[str, Any]:
        """A list request narrowed to the key's project in the view itself, so the limit
        counts its rows only (an administrator's key: as asked)."""
        scope = scope_of(actor)
        if scope is None:
            return {**request, "limit": limit}
        return {**request, "project": scope, "limit": limit}

    async def _rejection(self, request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        scope = scope_of(actor)  # the project's own rejection, as the gateway asks for it
        asked = request if scope is None else {**request, "project": scope}
        reply = await self._ask(subjects.QUERY_REJECTION)(asked)
        found = reply.get("rejection")
        if isinstance(found, dict) and not may_see(
            actor, event_owner({"type": "rejected", **found})
        ):
            reply["rejection"] = None
        return reply

    async def _snapshot_get(self, request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        reply = await self._ask(subjects.QUERY_SNAPSHOT_GET)(request)
        found = reply.get("snapshot")
        if found is not None and not may_see(actor, await self._snapshot_owner(found)):
            reply["snapshot"] = None
        return reply

    async def _snapshot_owner(self, snapshot: dict[str, Any]) -> str:
        """Its project (key_access.find_snapshot_owner, its sandbox read as sandbox.get)."""
        return await find_snapshot_owner(snapshot, self._sandbox)

    async def _sandbox(self, sandbox_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = (
            await self._ask(subjects.QUERY_GET)({"sandbox_id": sandbox_id})
        )["sandbox"]
        return found

    async def _snapshot_list(
        self, request: dict[str, Any], actor: dict[str, Any]
    ) -> dict[str, Any]:
        limit = page_limit(request)
        return await self._ask(subjects.QUERY_SNAPSHOT_LIST)(self._narrowed(request, actor, limit))

    async def _credits_get(self, request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        project = request.get("project")
        if not may_see(actor, project if isinstance(project, str) else None):
            return {"account": None, "position": self._projector.position}
        return await self._ask(subjects.QUERY_CREDITS_GET)(request)

    async def _usage_list(self, request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        scope = scope_of(actor)
        asked = request.get("project")
        if scope is not None and asked not in {None, scope}:
            raise RequestError(f"a {actor['type']} key sees the usage of project {scope} only")
        return await self._ask(subjects.QUERY_USAGE_LIST)({**request, "project": asked or scope})

    async def _whoami(self, _request: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
        return {"actor": actor}

    async def _sandbox_events(
        self, request: dict[str, Any], actor: dict[str, Any]
    ) -> dict[str, Any]:
        """``{sandbox_id | snapshot_id | command_id, after, limit}`` -> ``{events: [[seq,
        event], ...]}``: one of the key's sandboxes' or snapshots' events, or its command's
        rejection, after ``after``."""
        after, limit = request.get("after", 0), request.get("limit", MAX_EVENTS_PAGE)
        if not isinstance(after, int) or after < 0:
            raise RequestError("after must be a stream sequence (a whole number, 0 or more)")
        if not isinstance(limit, int) or not 0 < limit <= MAX_EVENTS_PAGE:
            raise RequestError(f"limit must be between 1 and {MAX_EVENTS_PAGE}")
        sandbox_id, command_id = request.get("sandbox_id"), request.get("command_id")
        snapshot_id = request.get("snapshot_id")
        if isinstance(sandbox_id, str) and is_valid_sandbox_id(sandbox_id):
            found = await self._sandbox(sandbox_id)
            if found is None or not may_see(actor, owner_of(found)):
                return {"events": [], "position": self._projector.position}
            filter_subject = subjects.sandbox_events_filter(sandbox_id)
        elif isinstance(snapshot_id, str) and is_valid_sandbox_id(snapshot_id):
            asked = {"snapshot_id": snapshot_id}
            found = (await self._ask(subjects.QUERY_SNAPSHOT_GET)(asked))["snapshot"]
            if found is None or not may_see(actor, await self._snapshot_owner(found)):
                return {"events": [], "position": self._projector.position}
            filter_subject = subjects.snapshot_events_filter(snapshot_id)
        elif isinstance(command_id, str) and is_valid_command_id(command_id):
            filter_subject = subjects.rejection_subject(command_id)
        else:
            raise RequestError("give a valid sandbox_id, snapshot_id or command_id")
        page: list[list[Any]] = []
        async for seq, data in read_subject(self._nc, filter_subject, start=after + 1):
            event = msgspec.json.decode(data)
            if filter_subject.endswith(".rejected") and not may_see(actor, event_owner(event)):
                continue
            page.append([seq, event])
            if len(page) >= limit:
                break
        return {"events": page, "position": self._projector.position}

"""Answers to ``sandboxer.query.*`` and ``sandboxer.admin.*`` over core NATS request/reply.

These subjects are outside every stream (a stream capturing them would
answer requests itself). Projectors join one queue group, so any of them
answers. Replies are JSON objects: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.key_request_rate import KeyRequestRates
from sandboxer.bus.responder import Handler, Responder
from sandboxer.clock import utc_now
from sandboxer.domain.account_state import PROJECT_RULE, is_valid_project
from sandboxer.domain.timestamps import shift
from sandboxer.errors import RequestError
from sandboxer.ids import is_valid_sandbox_id
from sandboxer.pagination import page_after, page_limit
from sandboxer.projections.account_rows import answer_account_query
from sandboxer.projections.consumer_filter import consumer_filter
from sandboxer.projections.key_queries import KeyQueries
from sandboxer.projections.key_rows import answer_key_query
from sandboxer.projections.projector import Projector
from sandboxer.projections.sandbox_view import state_to_dict
from sandboxer.projections.snapshot_rows import snapshot_to_dict

__all__ = ["QueryService"]

log = logging.getLogger(__name__)

QUEUE = "sandboxer-projector"


def _field(request: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = request.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise RequestError(f"field {name!r} must be a {kind.__name__}")
    return value


def _project(request: dict[str, Any]) -> str | None:
    """The ``project`` a list is narrowed to (a key's own: its rows are found before the
    limit is applied, not picked out of every project's first thousand), or route signals
    count."""
    project: str | None = _field(request, "project", str)
    if project is not None and not is_valid_project(project):
        raise RequestError(f"invalid project {project[:100]!r}: use {PROJECT_RULE}")
    return project


def _timestamp(request: dict[str, Any], name: str) -> str | None:
    """An ISO 8601 UTC time as events write it; the view compares such times as text, so
    anything else is refused rather than compared wrongly."""
    value = _field(request, name, str)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.utcoffset() != timedelta(0) or not value.endswith("Z"):
        raise RequestError(f"field {name!r} must be a UTC time such as 2026-12-02T10:00:00.000Z")
    return shift(value, 0)  # the events' exact format: milliseconds and Z


class QueryService:
    def __init__(
        self,
        nc: Client,
        projector: Projector,
        *,
        info: dict[str, Any],
        rates: KeyRequestRates | None = None,
    ) -> None:
        """``rates``: the keys' request rates this process holds (bus/key_request_rate.py),
        shared with its other services; a bucket of its own without one."""
        self._nc = nc
        self._projector = projector
        self._info = info
        self._rates = rates if rates is not None else KeyRequestRates()
        self._responder = Responder(nc)

    async def start(self) -> None:
        plain: dict[str, Handler] = {
            subjects.QUERY_GET: self._get,
            subjects.QUERY_LIST: self._list,
            subjects.QUERY_REJECTION: self._rejection,
            subjects.QUERY_HEALTH: self._health,
            subjects.QUERY_HOSTS: self._hosts,
            subjects.QUERY_CREDITS_GET: self._credits_get,
            subjects.QUERY_CREDITS_LIST: self._credits_list,
            subjects.QUERY_USAGE_LIST: self._usage_list,
            subjects.QUERY_ROUTE_SIGNALS: self._route_signals,
            subjects.QUERY_SNAPSHOT_GET: self._snapshot_get,
            subjects.QUERY_SNAPSHOT_LIST: self._snapshot_list,
            subjects.QUERY_KEY_GET: self._key_get,
            subjects.QUERY_KEY_LIST: self._key_list,
            subjects.ADMIN_REPLAY: self._replay,
        }
        # Key identities ask the same queries on subjects ending in their key id.
        keyed = KeyQueries(self._nc, self._projector, plain, self._rates)
        await self._responder.serve(
            plain, queue=QUEUE, scoped=keyed.routes(), resolve=keyed.resolve
        )

    async def stop(self) -> None:
        await self._responder.stop()

    async def _consistent(self, request: dict[str, Any]) -> int:
        """Wait (a while) for the view to reach ``min_seq`` and the log as it was when the
        view opened (:meth:`Projector.caught_up`); the position the answer reports: read
        before the view is, so an answer never claims more than its rows hold."""
        return await self._projector.caught_up(_field(request, "min_seq", int) or 0)

    async def _get(self, request: dict[str, Any]) -> dict[str, Any]:
        sandbox_id = _field(request, "sandbox_id", str)
        if not is_valid_sandbox_id(sandbox_id):
            raise RequestError(f"invalid sandbox_id {sandbox_id!r}")
        position = await self._consistent(request)
        assert self._projector.view is not None
        state = await self._projector.view.get(sandbox_id)
        return {
            "sandbox": state_to_dict(state) if state else None,
            "position": position,
        }

    async def _list(self, request: dict[str, Any]) -> dict[str, Any]:
        position = await self._consistent(request)
        assert self._projector.view is not None
        states = await self._projector.view.list_states(
            status=_field(request, "status", str),
            include_destroyed=bool(_field(request, "include_destroyed", bool, False)),
            due_before=_timestamp(request, "due_before"),
            consumer=consumer_filter(request),
            project=_project(request),
            after=page_after(request),
            limit=page_limit(request),
        )
        return {
            "sandboxes": [state_to_dict(s) for s in states],
            "next": states.next,
            "position": position,
        }

    async def _rejection(self, request: dict[str, Any]) -> dict[str, Any]:
        command_id = _field(request, "command_id", str)
        if not command_id:
            raise RequestError("field 'command_id' is required")
        position = await self._consistent(request)
        assert self._projector.view is not None
        return {
            # With ``project`` (a key's own, or the gateway's for a key): that project's
            # rejection of the command, not another project's sent under its id later.
            "rejection": await self._projector.view.rejection(command_id, _project(request)),
            "position": position,
        }

    async def _hosts(self, request: dict[str, Any]) -> dict[str, Any]:
        position = await self._consistent(request)
        assert self._projector.view is not None
        return {"hosts": await self._projector.view.hosts(), "position": position}

    async def _route_signals(self, request: dict[str, Any]) -> dict[str, Any]:
        """Routing's signals now (projections/route_rows.py, docs/routing.md#signals), with
        the live count of the ``project`` named (an API key's limit, docs/http-api.md#limits)."""
        project = _project(request)
        position = await self._consistent(request)
        assert self._projector.view is not None
        signals, by_host = await self._projector.view.route_signals(utc_now(), project)
        return {
            "signals": signals.to_dict(),
            "latency_p50_by_host": by_host,
            "position": position,
        }

    async def _snapshot_get(self, request: dict[str, Any]) -> dict[str, Any]:
        snapshot_id = _field(request, "snapshot_id", str)
        if not is_valid_sandbox_id(snapshot_id):
            raise RequestError(f"invalid snapshot_id {snapshot_id!r}")
        position = await self._consistent(request)
        assert self._projector.view is not None
        state = await self._projector.view.load_snapshot(snapshot_id)
        return {
            "snapshot": snapshot_to_dict(state) if state else None,
            "position": position,
        }

    async def _snapshot_list(self, request: dict[str, Any]) -> dict[str, Any]:
        position = await self._consistent(request)
        sandbox_id = _field(request, "sandbox_id", str)
        if sandbox_id is not None and not is_valid_sandbox_id(sandbox_id):
            raise RequestError(f"invalid sandbox_id {sandbox_id!r}")
        assert self._projector.view is not None
        states = await self._projector.view.list_snapshots(
            sandbox_id=sandbox_id,
            include_deleted=bool(_field(request, "include_deleted", bool, False)),
            project=_project(request),
            after=page_after(request),
            limit=page_limit(request),
        )
        return {
            "snapshots": [snapshot_to_dict(s) for s in states],
            "next": states.next,
            "position": position,
        }

    async def _account_query(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """Credits and usage (projections/account_rows.py, docs/payments.md)."""
        position = await self._consistent(request)
        assert self._projector.view is not None
        reply = await answer_account_query(kind, self._projector.view.db, request)
        return {**reply, "position": position}

    async def _credits_get(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._account_query("credits.get", request)

    async def _credits_list(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._account_query("credits.list", request)

    async def _usage_list(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._account_query("usage.list", request)

    async def _key_query(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """API keys (projections/key_rows.py): never a hash, never a key."""
        position = await self._consistent(request)
        assert self._projector.view is not None
        reply = await answer_key_query(kind, self._projector.view.db, request)
        return {**reply, "position": position}

    async def _key_get(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._key_query("key.get", request)

    async def _key_list(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self._key_query("key.list", request)

    async def _health(self, _request: dict[str, Any]) -> dict[str, Any]:
        position = self._projector.position
        return {
            **self._info,
            "position": position,
            "caught_up": position >= self._projector.log_end_at_open,
        }

    async def _replay(self, request: dict[str, Any]) -> dict[str, Any]:
        verify = bool(_field(request, "verify", bool, False))
        report = await (self._projector.verify() if verify else self._projector.rebuild())
        return {
            "events": report.events,
            "position": report.position,
            "seconds": round(report.seconds, 4),
            "events_per_second": round(report.events_per_second),
            "verified": report.verified,
            "differences": report.differences or [],
        }

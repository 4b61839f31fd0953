"""The hold sweep: a lost create's credit hold is given back while the control worker runs.

A create cut off between its credit hold and its append, and never sent again, is a lost
create (:mod:`~sandboxer.domain.lost_creates`). Its hold is given back when its project is
next refused for credits or budget (``hold_release.release_stranded_holds``): that is
when it costs the project anything. Until then ``sandboxer credits`` counted it as reserved,
for as long as the project was not refused: for ever, for a project with credits to spare.
Every ``SANDBOXER_LEAK_SWEEP_INTERVAL`` seconds this sweep gives such holds back too.

The credits view is asked which projects hold anything, and only for finding them: what is
given back is decided on each account's log, as a refusal decides it. An account is loaded
only while it holds credits for a sandbox not yet seen appended whose hold may be old enough
to be a lost create's, so a project's live sandboxes cost one read of each one's log, once.
Several control workers may sweep at once: each give-back is decided under the sandbox's and
the account's expected sequences, with deterministic command ids, so it happens once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.ask import ask_json
from sandboxer.bus.event_store import EventStore
from sandboxer.clock import utc_now
from sandboxer.domain.lost_creates import STRANDED_SECONDS
from sandboxer.domain.timestamps import LATEST, shift
from sandboxer.errors import RequestError
from sandboxer.pagination import MAX_LIMIT
from sandboxer.workers.hold_release import release_stranded_holds, seen_appended

__all__ = ["HoldSweep"]

QUERY_TIMEOUT = 10.0
"""Seconds one page of the credits view may take to answer."""


class HoldSweep:
    """Gives back lost creates' holds across every project (:meth:`sweep`)."""

    def __init__(self, nc: Client, store: EventStore) -> None:
        self._nc = nc
        self._store = store
        self._old_at: dict[str, str] = {}
        """When each hold seen becomes old enough to be a lost create's, by sandbox id
        (:data:`LATEST`: never): its account is not loaded again for it before then."""

    async def sweep(self) -> list[str]:
        """One sweep: the ids of the sandboxes whose holds were given back. Raises BusError
        when the credits view does not answer (the next sweep tries again)."""
        now = utc_now()
        held: set[str] = set()
        released: list[str] = []
        async for project, sandbox_ids in self._holding():
            held.update(sandbox_ids)
            if not any(self._may_be_lost(sandbox_id, now) for sandbox_id in sandbox_ids):
                continue
            account = await self._store.load_account(project)
            for sandbox_id, hold in account.state.reservations.items():
                # A hold no create made, or of unknown age, is never a lost create's.
                since = hold.held_since if hold.created_by is not None else None
                self._old_at[sandbox_id] = shift(since, STRANDED_SECONDS) if since else LATEST
            released += await release_stranded_holds(self._store, project, account)
        for sandbox_id in self._old_at.keys() - held:
            del self._old_at[sandbox_id]  # metered, released or given back: forgotten
        return released

    def _may_be_lost(self, sandbox_id: str, now: str) -> bool:
        old_at = self._old_at.get(sandbox_id)
        return not seen_appended(sandbox_id) and (old_at is None or old_at < now)

    async def _holding(self) -> AsyncIterator[tuple[str, list[str]]]:
        """Every project whose account the credits view shows holding credits, with the ids
        of the sandboxes they are held for, a page at a time."""
        after: str | None = None
        while True:
            request: dict[str, Any] = {"limit": MAX_LIMIT}
            if after is not None:
                request["after"] = after
            reply = await self._ask(request)
            for row in reply.get("accounts") or []:
                reservations = row.get("reservations") if isinstance(row, dict) else None
                if isinstance(reservations, dict) and reservations:
                    yield str(row["project"]), [str(key) for key in reservations]
            cursor = reply.get("next")
            if not isinstance(cursor, str):
                return
            after = cursor

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """One page of the credits view; ServiceNotRunning when no projector answers,
        RequestError when it refuses."""
        answer = await ask_json(
            self._nc,
            subjects.QUERY_CREDITS_LIST,
            msgspec.json.encode(request),
            timeout=QUERY_TIMEOUT,
        )
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise RequestError(f"the credits view refused the hold sweep's request: {error}")
        return answer

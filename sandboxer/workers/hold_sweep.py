"""The hold sweep: a lost create's credit hold is given back while the control worker runs.

A create cut off between its credit hold and its append, and never sent again, is a lost
create (:mod:`~sandboxer.domain.lost_creates`). Its hold is given back when its project is
next refused for credits or budget (``hold_release.release_stranded_holds``): that is
when it costs the project anything. Until then ``sandboxer credits`` counted it as reserved,
for as long as the project was not refused: for ever, for a project with credits to spare.
Every ``SANDBOXER_LEAK_SWEEP_INTERVAL`` seconds this sweep gives such holds back too.

The credits view is asked which projects hold anything, and only for finding them: what is
given back is decided on each account's log, as a refusal decides it. An account is loaded
only while it holds credits for a sandbox whose hold may be a lost create's by now: one the
sweep has not seen, or saw young and is old now. A hold it saw old and kept (its sandbox was
made) is never looked at again, so a project's live sandboxes cost one read of each one's
log, once.
Several control workers may sweep at once: each give-back is decided under the sandbox's and
the account's expected sequences, with deterministic command ids, so it happens once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.ask import ask_json
from sandboxer.bus.event_store import EventStore
from sandboxer.clock import utc_now
from sandboxer.domain.account_state import Reservation
from sandboxer.domain.lost_creates import lost_at
from sandboxer.domain.timestamps import LATEST
from sandboxer.errors import RequestError
from sandboxer.workers.hold_release import release_stranded_holds

__all__ = ["HoldSweep", "Holdings", "viewed_holdings"]

QUERY_TIMEOUT = 10.0
"""Seconds one page of the credits view may take to answer."""
PAGE = 100
"""Accounts asked for per page: each row carries its reservations, and a page must fit in
one message of the bus (1 MB by default)."""


Holdings = Callable[[], AsyncIterator[tuple[str, list[str]]]]
"""Every project holding credits, with the ids of the sandboxes they are held for."""


class HoldSweep:
    """Gives back lost creates' holds across every project (:meth:`sweep`)."""

    def __init__(self, store: EventStore, holdings: Holdings) -> None:
        """``holdings``: every project holding credits, with the sandbox ids they are held
        for (:func:`viewed_holdings`: the credits view's)."""
        self._store = store
        self._holdings = holdings
        self._old_at: dict[tuple[str, str], str] = {}
        """When each hold a sweep saw may next be a lost create's, by project and sandbox id
        (two projects' creates may name one id; :data:`LATEST`: never): its account is not
        loaded again for it before then. So an account is loaded for a hold while it is
        young at most twice (once seen, once old), and never again once it is known to be a
        made sandbox's."""

    async def sweep(self) -> list[str]:
        """One sweep: the ids of the sandboxes whose holds were given back. Raises BusError
        when the credits view does not answer (the next sweep tries again)."""
        now = utc_now()
        held: set[tuple[str, str]] = set()
        released: list[str] = []
        async for project, sandbox_ids in self._holdings():
            holds = [(project, sandbox_id) for sandbox_id in sandbox_ids]
            held.update(holds)
            if not any(self._may_be_lost(hold, now) for hold in holds):
                continue
            account = await self._store.load_account(project)
            released += await release_stranded_holds(self._store, project, account)
            for sandbox_id, reservation in account.state.reservations.items():
                self._old_at[project, sandbox_id] = _next_look(reservation, now)
        for hold in self._old_at.keys() - held:
            del self._old_at[hold]  # metered, released or given back: forgotten
        return released

    def _may_be_lost(self, hold: tuple[str, str], now: str) -> bool:
        old_at = self._old_at.get(hold)
        return old_at is None or old_at < now


def viewed_holdings(nc: Client) -> Holdings:
    """The projects the credits view shows holding credits, a page at a time."""

    async def holdings() -> AsyncIterator[tuple[str, list[str]]]:
        after: str | None = None
        while True:
            request: dict[str, Any] = {"limit": PAGE}
            if after is not None:
                request["after"] = after
            reply = await _credits_page(nc, request)
            for row in reply.get("accounts") or []:
                reservations = row.get("reservations") if isinstance(row, dict) else None
                if isinstance(reservations, dict) and reservations:
                    yield str(row["project"]), [str(key) for key in reservations]
            cursor = reply.get("next")
            if not isinstance(cursor, str):
                return
            after = cursor

    return holdings


async def _credits_page(nc: Client, request: dict[str, Any]) -> dict[str, Any]:
    """One page of the credits view; ServiceNotRunning when no projector answers,
    RequestError when it refuses."""
    answer = await ask_json(
        nc, subjects.QUERY_CREDITS_LIST, msgspec.json.encode(request), timeout=QUERY_TIMEOUT
    )
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise RequestError(f"the credits view refused the hold sweep's request: {error}")
    return answer


def _next_look(hold: Reservation, now: str) -> str:
    """When ``hold``, seen by a sweep at ``now``, may next be a lost create's: once it is old
    enough, if it is young; never, if no create made it, its age is not known, or it was old
    and kept (its sandbox was made, and a sandbox with events never has none again)."""
    since = hold.held_since if hold.created_by is not None else None
    if not since:
        return LATEST
    old_at = lost_at(since)
    return old_at if old_at > now else LATEST

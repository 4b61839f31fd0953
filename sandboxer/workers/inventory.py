"""Telemetry and stale inventory, answered by extension workers over request/reply.

Subjects (core NATS, outside every stream), one set per extension:

- ``sandboxer.admin.inspect.<ext>`` ``{"host": NAME?}``: read each host's
  telemetry, record a ``HostInspected`` event per host, reply with the reports;
- ``sandboxer.admin.stale.<ext>`` ``{"host": NAME?}``: reply with the drift
  between the log and the hosts (orphans, ghosts and corpses, see
  :mod:`sandboxer.domain.drift`), and the sandboxes stuck in ``destroying``
  because their teardown failed for good. On a hosted backend that labels attempts
  (:class:`~sandboxer.extensions.capabilities.AttemptScoped`), an orphan may be an earlier
  provisioning attempt's copy beside a live sandbox (``made_by``, ``live_attempt``);
- ``sandboxer.admin.reap.<ext>`` ``{"host": NAME?, "apply": bool}``: without
  ``apply`` the same as stale; with it, tear the orphans down (such a copy through
  ``teardown_attempt``, which leaves the live one), mark the ghosts
  failed, mark the corpses failed with the reason and tear down what is left
  of them, try the stuck teardowns again, and record a ``HostReaped`` event
  per host.

A backend that takes host-wide slots (:class:`~sandboxer.extensions.capabilities.LeftoverKeeper`:
ext.local's uids and link slots) also reports the sandboxes of which only those are left,
as found sandboxes with ``leftover`` set: orphans or corpses like any other, freed by the
backend's ``free_leftovers`` instead of its teardown (all of one reap in one call).

Remote backends' workers share a queue group (any one of them reaches every
host); a host-local backend's workers each answer for their own machine, so
a client gathers every reply.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import msgspec
from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.event_store import EventStore
from sandboxer.bus.responder import Responder
from sandboxer.clock import utc_now
from sandboxer.config.hosts import hosts_path, load_hosts
from sandboxer.config.settings import Settings
from sandboxer.domain.drift import (
    Drift,
    claimed,
    corpse_reason,
    earlier_attempt,
    find_drift,
    live_attempt,
    placed_elsewhere,
)
from sandboxer.domain.found import FoundSandbox, MadeBy, by_id
from sandboxer.domain.sandbox_decide import FinishTeardown, MarkFailed, MarkTeardownFailed
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.errors import (
    BusError,
    HostKeyRejected,
    HostUnreachable,
    RequestError,
    SandboxerError,
)
from sandboxer.events.types import SYSTEM_ACTOR, HostReaped
from sandboxer.extensions.base import Extension
from sandboxer.extensions.capabilities import AttemptScoped, HostLister, LeftoverKeeper
from sandboxer.workers.backend_for import backend_for_id, on_project_keys
from sandboxer.workers.deciding import apply
from sandboxer.workers.host_events import event_host, inspect_and_record

__all__ = ["InventoryService"]

log = logging.getLogger(__name__)


class InventoryService:
    def __init__(
        self,
        nc: Client,
        store: EventStore,
        extension: Extension,
        settings: Settings,
        *,
        uses_hosts: bool = True,
        hosted: bool = False,
    ) -> None:
        self._uses_hosts = uses_hosts and not hosted
        """False for a hosted provider: one place to look (its account), no hosts file."""
        self._hosted = hosted
        """A hosted provider has no host to inspect: it answers stale and reap only."""
        self._nc = nc
        self._store = store
        self._extension = extension
        self._settings = settings
        self._responder = Responder(nc, stamp={"extension": extension.id})

    async def start(self) -> None:
        queue = "" if self._extension.host_local else f"inventory-{self._extension.id}"
        await self._responder.serve(
            {
                subjects.admin_subject(action, self._extension.id): handler
                for action, handler in (
                    ("inspect", self._inspect),
                    ("stale", self._stale),
                    ("reap", self._reap),
                )
                if not (self._hosted and action == "inspect")
            },
            queue=queue,
        )

    async def stop(self) -> None:
        await self._responder.stop()

    # -- hosts ---------------------------------------------------------------------------------

    def _hosts(self, request: dict[str, Any]) -> list[str | None]:
        """The hosts to look at: for a host-local backend, this machine (None); for a hosted
        provider, its account (None)."""
        if self._extension.host_local or not self._uses_hosts:
            return [None]
        names = sorted(load_hosts(self._settings))
        wanted = request.get("host")
        if wanted:
            if wanted not in names:
                raise RequestError(
                    f"host {wanted!r} is not in the hosts file {hosts_path(self._settings)} "
                    f"(known: {', '.join(names) or 'none'}); add it there (see docs/hosts.md)"
                )
            return [wanted]
        return list(names)

    # -- inspect -------------------------------------------------------------------------------

    async def _inspect(self, request: dict[str, Any]) -> dict[str, Any]:
        reports = []
        for host in self._hosts(request):
            report = await inspect_and_record(self._store, self._extension, host)
            reports.append({"host": event_host(host), "report": report})
        return {"reports": reports}

    # -- stale and reap ------------------------------------------------------------------------

    async def _drift(self, host: str | None) -> Drift:
        if host is not None and isinstance(self._extension, HostLister):
            # Not list_sandboxes, which skips a host that does not answer: every sandbox the
            # log places there would be a ghost, marked failed, and torn down once it is back.
            found = list(await self._extension.list_host(host))
        else:
            found = [f for f in await self._extension.list_sandboxes() if f.host == host]
        if host is None and isinstance(self._extension, LeftoverKeeper):
            # Slots a lost directory left: judged by the log like what a directory holds (an
            # orphan, or a corpse of a sandbox the log calls ready, no longer a ghost).
            listed = {item.sandbox_id for item in found}
            found += [
                item
                for item in await self._extension.list_leftovers()
                if item.sandbox_id not in listed
            ]
        statuses: dict[str, str] = {}
        copies: dict[str, str] = {}
        states: dict[str, SandboxState] = {}
        judged = []
        for item in found:
            if item.sandbox_id not in states:  # a hosted id may list several sandboxes
                states[item.sandbox_id] = (await self._store.load(item.sandbox_id)).state
            state = states[item.sandbox_id]
            if not claimed(item, self._extension.id, state):
                continue  # perhaps another declaration's, on the same provider account
            judged.append(item)
            statuses[item.sandbox_id] = state.status
            # Each backend lists only its own (by label, marker or root), so a sandbox the
            # log places elsewhere is a copy left here: a create that landed after this
            # backend gave it up and it was rerouted, or what a failed cleanup missed.
            if (where := placed_elsewhere(item, self._extension.id, state)) is not None:
                copies[item.sandbox_id] = where
        ready = await self._ready_in_log(host)
        # BYOK sandboxes live in their project's provider account, out of this list's sight.
        elsewhere = await on_project_keys(self._store, self._extension, ready)
        # An earlier attempt's copy beside a live sandbox is judged only where the backend
        # can remove that attempt's alone (``_remove``): a plain teardown takes the live one.
        live: dict[str, MadeBy] = {}
        if isinstance(self._extension, AttemptScoped):
            for sandbox_id, held in by_id(judged).items():
                attempt = live_attempt(held, states[sandbox_id], self._extension.id)
                if attempt is not None:
                    live[sandbox_id] = attempt
        return find_drift(judged, statuses, [r for r in ready if r not in elsewhere], copies, live)

    async def _ready_in_log(self, host: str | None) -> list[str]:
        """Sandboxes the log calls live and usable: ``active`` is ``ready`` after first use,
        and a paused one is frozen, not gone."""
        return [
            sandbox["sandbox_id"]
            for status in ("ready", "active", "pausing", "paused", "resuming")
            for sandbox in await self._in_log(status, host)
        ]

    async def _stuck_in_log(self, host: str | None) -> list[dict[str, Any]]:
        """Sandboxes of this backend and host whose teardown failed for good."""
        return [
            {"sandbox_id": sandbox["sandbox_id"], "reason": sandbox["teardown_failure"]}
            for sandbox in await self._in_log("destroying", host)
            if sandbox.get("teardown_failure")
        ]

    async def _in_log(self, status: str, host: str | None) -> list[dict[str, Any]]:
        """What the sandbox view holds in ``status`` for this backend on ``host``."""
        try:
            reply = await self._nc.request(
                subjects.QUERY_LIST,
                msgspec.json.encode({"status": status, "limit": 10_000}),
                timeout=10,
            )
        except Exception as exc:
            raise BusError(
                f"listing {status} sandboxes failed: no projector answered "
                f"({type(exc).__name__}); is 'sandboxer up' running?"
            ) from exc
        listed = msgspec.json.decode(reply.data)
        if not listed.get("ok"):
            raise BusError(f"listing {status} sandboxes failed: {listed.get('error')}")
        node = socket.gethostname()
        mine = []
        for sandbox in listed["sandboxes"]:
            if sandbox["extension"] != self._extension.id:
                continue
            if self._extension.host_local:
                if (sandbox.get("reachability") or {}).get("node") == node:
                    mine.append(sandbox)
            elif sandbox.get("host") == host:
                mine.append(sandbox)
        return mine

    async def _stale(self, request: dict[str, Any]) -> dict[str, Any]:
        hosts: list[dict[str, Any]] = []
        for host in self._hosts(request):
            try:
                drift = await self._drift(host)
            except (HostUnreachable, HostKeyRejected) as exc:
                hosts.append({"host": event_host(host), "unreachable": exc.message})
                continue
            hosts.append(
                {
                    "host": event_host(host),
                    **drift.to_dict(),
                    "stuck": await self._stuck_in_log(host),
                }
            )
        return {"hosts": hosts}

    async def _reap(self, request: dict[str, Any]) -> dict[str, Any]:
        if not request.get("apply"):
            return {**await self._stale(request), "applied": False}
        hosts: list[dict[str, Any]] = []
        for host in self._hosts(request):
            try:
                drift = await self._drift(host)
            except (HostUnreachable, HostKeyRejected) as exc:  # judged once it answers
                hosts.append({"host": event_host(host), "unreachable": exc.message})
                continue
            removed = []
            leftovers: list[str] = []  # freed together, after the loops
            for orphan in drift.orphans:
                await self._remove(orphan, host, leftovers, drift)
                removed.append(orphan.sandbox_id)
            for corpse in drift.corpses:
                # Recorded before the teardown: should the teardown fail, the sandbox is
                # already failed, and what is left is an orphan the next reap removes.
                await apply(
                    self._store,
                    corpse.sandbox_id,
                    MarkFailed(
                        job_id="reap-stale",
                        stage="job",
                        reason=f"{corpse_reason(corpse)} (found by reap-stale, which removed what "
                        "was left); recreate or destroy it",
                    ),
                )
                await self._remove(corpse, host, leftovers, drift)
                removed.append(corpse.sandbox_id)
            if leftovers and isinstance(self._extension, LeftoverKeeper):
                await self._extension.free_leftovers(leftovers)
            ghosts = drift.ghosts
            for ghost in ghosts:
                await apply(
                    self._store,
                    ghost,
                    MarkFailed(
                        job_id="reap-stale",
                        stage="job",
                        reason=f"its resources are gone from {event_host(host)} "
                        "(found by reap-stale); recreate or destroy it",
                    ),
                )
            marked = [*ghosts, *(corpse.sandbox_id for corpse in drift.corpses)]
            removed += await self._retry_stuck(host)
            name = event_host(host)
            if removed or marked:
                await self._store.record(
                    HostReaped(
                        host=name,
                        extension=self._extension.id,
                        actor=SYSTEM_ACTOR,
                        at=utc_now(),
                        removed=removed,
                        marked_failed=marked,
                    )
                )
            hosts.append({"host": name, "removed": removed, "marked_failed": marked})
        return {"hosts": hosts, "applied": True}

    async def _remove(
        self, found: FoundSandbox, host: str | None, leftovers: list[str], drift: Drift
    ) -> None:
        """Tear down what the host holds of ``found``; when only leftovers are, add it to
        ``leftovers``, all freed in one call (the backend looks at the host once for them);
        when it is an earlier attempt's copy beside the live sandbox, only what that attempt
        (and earlier ones) made, never the sandbox the log's ``ready`` names."""
        if found.leftover and isinstance(self._extension, LeftoverKeeper):
            leftovers.append(found.sandbox_id)
        elif earlier_attempt(found, drift.live_attempts.get(found.sandbox_id)):
            # Judged only for an AttemptScoped backend (``_drift``), and always labelled.
            assert isinstance(self._extension, AttemptScoped)
            assert found.made_by is not None
            await self._extension.teardown_attempt(found.sandbox_id, found.made_by, host=host)
        else:
            await self._extension.teardown(found.sandbox_id, host=host)

    async def _retry_stuck(self, host: str | None) -> list[str]:
        """Try each failed teardown again: destroyed when it works, a new reason when not."""
        finished = []
        for stuck in await self._stuck_in_log(host):
            sandbox_id = stuck["sandbox_id"]
            try:
                backend = await backend_for_id(self._store, self._extension, sandbox_id)
                await backend.teardown(sandbox_id, host=host)
            except SandboxerError as exc:
                log.warning("reap-stale: the teardown of %s failed again: %s", sandbox_id, exc)
                await apply(
                    self._store,
                    sandbox_id,
                    MarkTeardownFailed(
                        job_id="reap-stale", reason=f"{exc.message} (reap-stale tried again)"
                    ),
                )
                continue
            await apply(self._store, sandbox_id, FinishTeardown(job_id="reap-stale"))
            finished.append(sandbox_id)
        return finished

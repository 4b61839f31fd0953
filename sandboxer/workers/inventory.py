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
  of them, freeze or thaw the sandboxes not as paused as the log says (``matched``),
  try the stuck teardowns again, and record a ``HostReaped`` event per host.

The log's usable sandboxes are read before the backend is listed: one made ready after the
listing is then not among them, where read after it would be a ghost. And the log moves on
while a reap runs (another worker recreates, destroys, resumes): right before each removal or
mark, the sandbox's log is read again, and the step is taken only if it still holds
(:func:`~sandboxer.domain.drift.reap_agrees`, :func:`~sandboxer.domain.drift.usable_as_judged`;
a mark is appended only on the state it was checked on). On an
:class:`~sandboxer.extensions.capabilities.AttemptScoped` backend each removal goes through
``teardown_attempt`` as far as the log's last provisioning reaches
(:func:`~sandboxer.domain.drift.removal_scope`), so a recreate started after that read stays,
as the leak sweep's removals do.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
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
    ReconcileStep,
    Unmatched,
    claimed,
    corpse_reason,
    find_drift,
    live_attempt,
    placed_elsewhere,
    reap_agrees,
    removal_scope,
    step_for,
    usable_as_judged,
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
from sandboxer.workers.pause_job import PauseJob
from sandboxer.workers.scoped_teardown import remove_scoped

__all__ = ["InventoryService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Judged:
    """One look at a host and the log, and what ``reap`` needs to check it again later."""

    drift: Drift
    states: Mapping[str, SandboxState]
    """Each found sandbox's state as judged."""
    held: Mapping[str, Sequence[FoundSandbox]]
    """Each judged id's listed sandboxes (a hosted id may list several)."""
    ready: Mapping[str, MadeBy]
    """The sandboxes the log called usable, read before the listing, each with the
    provisioning it named."""


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
        self._pauses = PauseJob(store, extension, explain=str)

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

    async def _drift(self, host: str | None) -> _Judged:
        # The log first: a sandbox it calls usable now was made before the listing, so the
        # listing holds it unless it is gone. Read after, one made ready meanwhile would be
        # missing from the listing, a ghost, and its live sandbox marked failed.
        ready = await self._ready_in_log(host)
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
        # BYOK sandboxes live in their project's provider account, out of this list's sight.
        elsewhere = await on_project_keys(self._store, self._extension, list(ready))
        # An earlier attempt's copy beside a live sandbox is judged only where the backend
        # can remove that attempt's alone (``_remove``): a plain teardown takes the live one.
        live: dict[str, MadeBy] = {}
        held = by_id(judged)
        if self._by_attempt:
            for sandbox_id, items in held.items():
                attempt = live_attempt(items, states[sandbox_id], self._extension.id)
                if attempt is not None:
                    live[sandbox_id] = attempt
        drift = find_drift(judged, statuses, [r for r in ready if r not in elsewhere], copies, live)
        return _Judged(drift=drift, states=states, held=held, ready=ready)

    @property
    def _by_attempt(self) -> bool:
        """Copies are judged by attempt, and removals scoped, only where the backend can
        remove one attempt's alone."""
        return isinstance(self._extension, AttemptScoped)

    async def _ready_in_log(self, host: str | None) -> dict[str, MadeBy]:
        """Sandboxes the log calls live and usable (``active`` is ``ready`` after first use,
        and a paused one is frozen, not gone), each with the provisioning it names: a ghost
        is marked failed only while the log still names that one (``_reap``)."""
        return {
            sandbox["sandbox_id"]: (sandbox["generation"], sandbox["attempt"])
            for status in ("ready", "active", "pausing", "paused", "resuming")
            for sandbox in await self._in_log(status, host)
        }

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
                drift = (await self._drift(host)).drift
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
                judged = await self._drift(host)
            except (HostUnreachable, HostKeyRejected) as exc:  # judged once it answers
                hosts.append({"host": event_host(host), "unreachable": exc.message})
                continue
            drift = judged.drift
            removed = []
            leftovers: list[str] = []  # freed together, after the loops
            for orphan in drift.orphans:
                step = self._step(orphan, judged.states[orphan.sandbox_id], judged)
                if await self._remove(orphan, step, host, leftovers, judged):
                    removed.append(orphan.sandbox_id)
            failed_corpses = []
            for corpse in drift.corpses:
                # Recorded before the teardown: should the teardown fail, the sandbox is
                # already failed, and what is left is an orphan the next reap removes.
                if not await self._mark_failed(
                    corpse.sandbox_id,
                    f"{corpse_reason(corpse)} (found by reap-stale, which removed what "
                    "was left); recreate or destroy it",
                    partial(self._still_a_corpse, corpse, judged),
                ):
                    continue
                failed_corpses.append(corpse.sandbox_id)
                if await self._remove(corpse, "remove", host, leftovers, judged):
                    removed.append(corpse.sandbox_id)
            if leftovers and isinstance(self._extension, LeftoverKeeper):
                await self._extension.free_leftovers(leftovers)
            ghosts = []
            for ghost in drift.ghosts:
                if await self._mark_failed(
                    ghost,
                    f"its resources are gone from {event_host(host)} "
                    "(found by reap-stale); recreate or destroy it",
                    partial(usable_as_judged, judged.ready.get(ghost)),
                ):
                    ghosts.append(ghost)
            matched = [
                {"sandbox_id": unmatched.found.sandbox_id, "step": unmatched.step}
                for unmatched in drift.unmatched
                if await self._match(unmatched, judged)
            ]
            marked = [*ghosts, *failed_corpses]
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
            hosts.append(
                {"host": name, "removed": removed, "marked_failed": marked, "matched": matched}
            )
        return {"hosts": hosts, "applied": True}

    async def _match(self, unmatched: Unmatched, judged: _Judged) -> bool:
        """Freeze or thaw a sandbox judged not as paused as its log says, if its step is
        still that one now that its log is read again (a pause or resume decided since is
        its job's); whether it was done."""
        state = (await self._store.load(unmatched.found.sandbox_id)).state
        if self._step(unmatched.found, state, judged) != unmatched.step:
            return False
        return await self._pauses.match_log(unmatched.step, state)

    def _step(self, found: FoundSandbox, state: SandboxState, judged: _Judged) -> ReconcileStep:
        """The step for ``found`` were the log to say ``state`` (with the same listing)."""
        listed = judged.held.get(found.sandbox_id, [found])
        return step_for(found, self._extension.id, state, listed, by_attempt=self._by_attempt)

    def _still_a_corpse(self, found: FoundSandbox, judged: _Judged, state: SandboxState) -> bool:
        """Whether ``found``, judged a corpse, still is one now that the log says ``state``:
        the sandbox the listing saw dead, not one recreated since."""
        then = judged.states[found.sandbox_id]
        now = self._step(found, state, judged)
        return reap_agrees("fail", (then.generation, then.attempt), now, state)

    async def _mark_failed(
        self, sandbox_id: str, reason: str, holds: Callable[[SandboxState], bool]
    ) -> bool:
        """Mark the sandbox failed if what reap-stale judged still ``holds`` on its log, read
        again now (and appended only on the state checked); whether it was marked."""
        _, marked = await apply(
            self._store,
            sandbox_id,
            MarkFailed(job_id="reap-stale", stage="job", reason=reason),
            only_if=holds,
        )
        if not marked:
            log.info("reap-stale: %s left alone: its log moved on since it was judged", sandbox_id)
        return marked

    async def _remove(
        self,
        found: FoundSandbox,
        judged_step: ReconcileStep,
        host: str | None,
        leftovers: list[str],
        judged: _Judged,
    ) -> bool:
        """Remove what the host holds of ``found``, judged to be removed by ``judged_step``,
        if the step still holds on its log, read again now (:func:`reap_agrees`): whether it
        was. The removal goes as far as :func:`removal_scope` says on that state, where the
        backend can tell attempts apart: an earlier attempt's copy beside the live sandbox
        only that attempt's, a failed or destroyed sandbox's only what its last provisioning
        made (never a recreate's started after this read). When only leftovers are held, it
        is added to ``leftovers``, all freed in one call (the backend looks at the host once
        for them, and leaves those no longer left over)."""
        loaded = await self._store.load(found.sandbox_id)
        state = loaded.state
        now = self._step(found, state, judged)
        then = judged.states.get(found.sandbox_id, state)
        if not reap_agrees(judged_step, (then.generation, then.attempt), now, state):
            log.info(
                "reap-stale: %s left alone: judged %s, its log now says %s (%s)",
                found.sandbox_id,
                judged_step,
                state.status,
                now,
            )
            return False
        if found.leftover and isinstance(self._extension, LeftoverKeeper):
            leftovers.append(found.sandbox_id)
            return True
        scope = removal_scope(now, found, state)
        await remove_scoped(self._extension, found.sandbox_id, host, scope)
        return True

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
